"""Run ids, atomic records that are never lost, the versioned schema, and the table of many folders."""
import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, TINY
from harness import results
from record_folders import fixture, hosts, save, synthetic


def record(rid, status="ok", ppl=10.0):
    return {"run_id": rid, "status": status, "error": None, "config": {"bits": 4, "model": {"name": "m"}},
            "metrics": {"pydoc/ppl": ppl}, "stats": {"sparsity": 0.0}, "timings": {}, "env": {}}


def test_run_id_depends_on_content_not_key_order():
    a = {"bits": 4, "model": {"name": "x", "path": "p"}, "tasks": ["pydoc"]}
    b = {"tasks": ["pydoc"], "model": {"path": "p", "name": "x"}, "bits": 4}
    assert results.run_id(a) == results.run_id(b)
    assert results.run_id(a) != results.run_id(a | {"bits": 3})


def test_rewrite_keeps_every_earlier_record(tmp_path):
    results.write(tmp_path, record("r1", "failed"))
    results.write(tmp_path, record("r1", "ok", 9.0))
    results.write(tmp_path, record("r2", "ok", 12.0))
    table = results.load(tmp_path)
    assert sorted(table["run_id"]) == ["r1", "r2"]
    assert table.set_index("run_id").loc["r1", "metrics.pydoc/ppl"] == 9.0
    (old,) = (tmp_path / "superseded").iterdir()
    assert json.loads(old.read_text())["status"] == "failed"
    assert not [p for p in (tmp_path / "runs").iterdir() if p.suffix != ".json"]


# --- the schema and load ---------------------------------------------------------------------------


def test_a_record_from_before_the_schema_version_loads_into_todays_columns(tmp_path, hydra_cfg):
    """tests/fixtures/record_v0.json is a record as the harness wrote it before schema_version (the
    same experiment as record_v1.json, which the code writes today)."""
    from harness.run import run

    new = run(hydra_cfg(*TINY, "method=rtn", "bits=4", "group_size=32", f"results_dir={tmp_path / 'new'}"))
    assert new["schema_version"] == results.SCHEMA_VERSION and new["latency"] is None
    old = fixture("record_v0.json")
    assert "schema_version" not in old and "latency" not in old
    save(tmp_path / "old", old)
    old_table, new_table = results.load(tmp_path / "old"), results.load(tmp_path / "new")
    assert set(old_table.columns) <= set(new_table.columns)
    assert list(old_table.columns[: len(results.COLUMNS)]) == list(results.COLUMNS) == list(new_table.columns[: len(results.COLUMNS)])
    old_row, new_row = old_table.iloc[0], new_table.iloc[0]
    assert old_row["schema_version"] == 0 and new_row["schema_version"] == results.SCHEMA_VERSION
    assert old_row["config.model.name"] == new_row["config.model.name"] == "tiny-random"
    assert old_row["config.bits"] == 4 and old_row["stats.bits_per_weight"] == 4.625
    assert old_row["tasks.pydoc.seqlen"] == 256 and old_row["tasks.pydoc.predicted_tokens"] == 1020
    assert old_row[["latency.kernel", "latency.prefill_ms", "config.calib.dataset"]].isna().all()
    # Nothing renamed: only what it lacks is added, and its all-keys run id becomes today's identity hash.
    assert results.normalize(old) == results.EMPTY_RECORD | old | {"run_id": new["run_id"]}
    both = results.load([tmp_path / "old", tmp_path / "new"])
    assert len(both) == 1 and both.loc[0, "copies"] == 2  # one experiment, one row
    both.to_parquet(tmp_path / "all.parquet")
    assert len(pd.read_parquet(tmp_path / "all.parquet")) == 1


def test_every_fixed_column_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)`", readme, flags=re.M))
    assert set(results.COLUMNS) - documented == set()


def test_load_merges_many_folders_keeps_every_valid_record_and_reports_corrupt_ones(tmp_path, caplog):
    folders = hosts(tmp_path, 1000, n_hosts=4)
    # The same runs again on a fifth host: a later failure never hides an ok record, a later ok wins.
    fifth = tmp_path / "host4"
    save(fifth, synthetic(0, "host4", status="failed", finished_at="2026-12-02T05:00:00+0000"))
    newer = synthetic(1, "host4", finished_at="2026-12-02T05:00:00+0000")
    newer["metrics"]["pydoc/ppl"] = 1.5
    save(fifth, newer)
    # ... and a run only ever failed, twice: its latest failure is shown.
    save(fifth, synthetic(5000, "host4", status="failed", finished_at="2026-12-01T05:00:00"), name="a")  # no offset: UTC
    save(fifth, synthetic(5000, "host4", status="failed", finished_at="2026-12-01T06:00:00+0100"), name="b")
    later_failure = synthetic(5000, "host4", status="failed", finished_at="2026-12-01T05:30:00+0000")
    later_failure["error"] = "RuntimeError: the later one"
    save(fifth, later_failure, name="c")
    text = json.dumps(synthetic(9999, "x"), indent=2)
    runs = fifth / results.RUNS
    corrupt = {
        "truncated.json": (text[: len(text) // 2], "not valid JSON"),
        "empty.json": ("", "empty file"),
        "list.json": ("[1, 2]", "a JSON list, not an object"),
        "no_id.json": (json.dumps({"status": "ok", "metrics": {}}), "no run_id"),
        "no_status.json": (json.dumps({"run_id": "abc"}), "status None"),
        "future.json": (json.dumps(synthetic(7, "x") | {"schema_version": results.SCHEMA_VERSION + 1}), "newer than this harness"),
        "bad_section.json": (json.dumps(synthetic(8, "x") | {"metrics": [1.0]}), "its metrics is a JSON list"),
    }
    for name, (content, _) in corrupt.items():
        (runs / name).write_text(content)
    (runs / "binary.json").write_bytes(b"{\"run_id\": \"\x80\x81\"}")

    errors = []
    with caplog.at_level(logging.WARNING, logger="harness"):
        table = results.load([*map(str, folders), fifth, fifth], errors=errors)

    assert len(table) == 1001 and table["run_id"].is_unique
    by_id = table.set_index("run_id")
    assert by_id.loc[synthetic(0, "x")["run_id"], "status"] == "ok"
    assert by_id.loc[synthetic(0, "x")["run_id"], "copies"] == 2
    assert by_id.loc[newer["run_id"], "metrics.pydoc/ppl"] == 1.5 and by_id.loc[newer["run_id"], "env.host"] == "host4"
    # 06:00+0100 is 05:00 UTC: the failure at 05:30 UTC is the latest of the three.
    assert by_id.loc[later_failure["run_id"], "error"] == "RuntimeError: the later one"
    assert by_id.loc[later_failure["run_id"], "copies"] == 3
    assert sorted(by_id.loc[synthetic(s, "x")["run_id"], "metrics.pydoc/ppl"] for s in range(2, 1000)) == [100.0 + s for s in range(2, 1000)]

    reasons = {Path(e.path).name: e.reason for e in errors}
    assert set(reasons) == {*corrupt, "binary.json"}
    for name, (_, why) in corrupt.items():
        assert why in reasons[name], (name, reasons[name])
    assert "not UTF-8" in reasons["binary.json"]
    assert table.attrs["load_errors"] == errors
    for error in errors:
        assert any(error.path in r.getMessage() and error.reason in r.getMessage() for r in caplog.records)


def test_load_takes_a_folder_as_str_or_path_and_names_a_missing_one(tmp_path):
    (folder,) = hosts(tmp_path, 3, n_hosts=1)
    assert len(results.load(str(folder))) == len(results.load(folder)) == len(results.load(folder / results.RUNS)) == 3
    with pytest.raises(FileNotFoundError, match="nowhere"):
        results.load([folder, tmp_path / "nowhere"])
    empty = results.load(_empty(tmp_path))
    assert len(empty) == 0 and list(empty.columns) == list(results.COLUMNS)


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty" / results.RUNS).mkdir(parents=True)
    return tmp_path / "empty"
