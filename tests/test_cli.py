"""End to end through `python -m harness` on the tiny random model: records, skip-done, force, failure."""
import json

import pandas as pd

from conftest import TINY, records, run_cli
from harness import results


def test_run_writes_one_complete_record(tmp_path):
    run_cli(*TINY, "method=rtn", "bits=3", "group_size=32", results_dir=tmp_path)
    (record,) = records(tmp_path)
    assert record["status"] == "ok" and record["error"] is None
    assert set(record) >= {"config", "metrics", "stats", "timings", "env", "status", "error", "run_id"}
    assert record["config"]["bits"] == 3 and record["config"]["method"]["name"] == "rtn"
    assert record["metrics"]["pydoc/ppl"] > 1
    assert record["stats"]["bits_per_weight"] == 3 + 3 / 32 + 16 / 32  # asymmetric: scale + 3-bit zero
    assert record["tasks"]["pydoc"]["windows"] == 4 and record["tasks"]["pydoc"]["seqlen"] == 256
    assert record["run_id"] == results.run_id(record["config"])
    assert not list((tmp_path / "runs").glob("*.tmp"))


def test_done_run_is_skipped_and_force_keeps_the_old_record(tmp_path):
    run_cli(*TINY, "method=none", results_dir=tmp_path)
    (first,) = records(tmp_path)
    run_cli(*TINY, "method=none", results_dir=tmp_path)
    assert records(tmp_path) == [first]  # skipped: same record, untouched
    run_cli(*TINY, "method=none", "force=true", results_dir=tmp_path)
    (second,) = records(tmp_path)
    assert second["started_at"] >= first["started_at"] and second["run_id"] == first["run_id"]
    (kept,) = (tmp_path / "superseded").glob("*.json")
    assert json.loads(kept.read_text()) == first
    table = results.load(tmp_path)
    assert isinstance(table, pd.DataFrame) and len(table) == 1
    assert table.loc[0, "metrics.pydoc/ppl"] == second["metrics"]["pydoc/ppl"]


def test_failed_run_is_recorded_and_exits_nonzero(tmp_path):
    empty = tmp_path / "no-wikitext-here"
    empty.mkdir()
    proc = run_cli(*TINY, "method=none", "tasks=[wikitext2]", f"data_paths.wikitext2={empty}", results_dir=tmp_path, check=False)
    assert proc.returncode != 0
    (record,) = records(tmp_path)
    assert record["status"] == "failed"
    assert "no files for split 'test' under data_path" in record["error"]


def test_sweep_runs_valid_combinations_and_resumes(tmp_path):
    sweep = ["-m", *TINY, "method=rtn,magnitude", "bits=3,16", "sparsity=0,0.5"]
    proc = run_cli(*sweep, results_dir=tmp_path)
    assert "method=rtn does not prune" in proc.stderr  # bad combinations are named, not fatal
    done = {(r["config"]["method"]["name"], r["config"]["bits"], r["config"]["sparsity"]) for r in records(tmp_path)}
    assert done == {("rtn", 3, 0.0), ("magnitude", 3, 0.5), ("magnitude", 16, 0.5)}
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    proc = run_cli(*sweep, results_dir=tmp_path)
    assert "plan: 8 points: 3 done, 5 invalid, 0 running elsewhere, 0 failed before (retried), 0 to launch" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == first
