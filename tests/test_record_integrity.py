"""Records under a sweep's faults: what the run id hashes, the code version, corrupt records, interrupted
runs, ok records never replaced by failed ones, concurrent writers, unique Hydra folders, exit status."""
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY, records, run_cli
from harness import cluster, results
from harness.run import plan, run
from harness.sweep import status

# A point that evaluates for tens of seconds even on a fast CPU: the whole pydoc test half through a
# 1024-wide random model (the 64-wide test model got through it in 1.5 s on one CI machine).
SLOW = ["model=tiny-random", "model.random.hidden_size=1024", "model.random.intermediate_size=4096", "method=none",
        "seqlen=2048", "max_eval_tokens=10000000"]


def rid_of(hydra_cfg, *overrides):
    return results.run_id(plan(hydra_cfg(*overrides))[0].config)


def test_run_id_is_what_can_change_the_result(hydra_cfg):
    base = rid_of(hydra_cfg, *TINY)
    # perplexity only: knowledge-task caps, batch sizes, judge settings, data locations cannot matter
    assert rid_of(hydra_cfg, *TINY, "max_samples=3", "eval_batch_size=7", "++judge.kind=http", "data_paths.wikitext2=/x") == base
    assert rid_of(hydra_cfg, *TINY, "bits=3") != base
    assert rid_of(hydra_cfg, *TINY, "dtype=bfloat16") != base  # dtype and device do change results
    trivia = ["model=tiny-random", "tasks=[trivia]"]
    assert rid_of(hydra_cfg, *trivia, "eval_batch_size=3") == rid_of(hydra_cfg, *trivia)
    assert rid_of(hydra_cfg, *trivia, "max_samples=3") != rid_of(hydra_cfg, *trivia)


def test_record_carries_the_code_version_and_stale_records_are_shown_and_rerun(hydra_cfg, tmp_path):
    cfg = [*TINY, "method=none", f"results_dir={tmp_path}"]
    first = run(hydra_cfg(*cfg))
    code = first["env"]["code"]
    assert set(code["packages"]) == {"torch", "transformers", "hqq", "bitsandbytes", "lm_eval", "datasets"}
    assert code["packages"]["torch"] and len(code["git_commit"] or "x" * 40) == 40 and "git_dirty" in code
    assert "model_revision" in first["env"]
    path = results.record_path(tmp_path, first["run_id"])
    old = json.loads(path.read_text())
    old["env"]["code"]["packages"]["transformers"] = "4.0.0"  # made by other code
    path.write_text(json.dumps(old))
    (row,) = status(str(tmp_path), None)["points"]
    assert row["state"] == "stale" and "transformers 4.0.0 ->" in row["detail"]
    assert run(hydra_cfg(*cfg)) == old  # a stale ok record still counts as done by default
    again = run(hydra_cfg(*cfg, "rerun_stale=true"))
    assert again["started_at"] >= old["started_at"] and results.read(tmp_path, first["run_id"]) == again
    (kept,) = (tmp_path / "superseded").glob("*.json")
    assert json.loads(kept.read_text()) == old


def test_truncated_record_is_reported_and_its_point_runs_again(hydra_cfg, tmp_path):
    cfg = hydra_cfg(*TINY, "method=none", f"results_dir={tmp_path}")
    first = run(cfg)
    path = results.record_path(tmp_path, first["run_id"])
    path.write_text(path.read_text()[:100])  # a node died mid-copy
    with pytest.raises(results.CorruptRecord, match=re.escape(str(path)) + ": not valid JSON"):
        results.read(tmp_path, first["run_id"])
    (row,) = status(str(tmp_path), None)["points"]
    assert row["state"] == "corrupt" and str(path) in row["detail"]
    second = run(cfg)
    assert second["status"] == "ok" and results.read(tmp_path, first["run_id"]) == second
    (kept,) = (tmp_path / "superseded").glob("*.json")
    assert len(kept.read_text()) == 100  # the broken file is kept, not lost


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_inside_a_run_records_it_interrupted(tmp_path, sig):
    cmd = [sys.executable, "-m", "harness", *SLOW, f"results_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:  # Hydra logs to stdout
        output.append(line)
        if "pydoc windows: 0/" in line:  # the evaluation has begun
            break
    proc.send_signal(sig)
    output += proc.stdout.readlines()
    assert proc.wait(timeout=120) != 0, "".join(output)
    (record,) = records(tmp_path)
    assert record["status"] == "interrupted" and record["error"] == f"interrupted by {sig.name}", "".join(output)
    assert not list((tmp_path / "claims").glob("*.lock"))  # the claim is released


def test_a_requeue_is_named_by_its_sigusr2_even_when_slurms_sigterm_arrives_inside_the_handler():
    # What submitit does at a time limit: its SIGUSR2 handler runs `scontrol requeue` (Slurm then sends the
    # job SIGTERM, which submitit's bypass handler ignores) and exits. Seen on CI: the SIGTERM landed while
    # the SIGUSR2 handler ran, and the record said "interrupted by SIGTERM".
    def requeue(signum, frame):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # Python runs the SIGTERM handler here, inside this one
        sys.exit(-1)

    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    signal.signal(signal.SIGUSR2, requeue)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        with cluster.signals_recorded() as seen, pytest.raises(SystemExit) as exit_info:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(1)
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    assert seen == ["SIGUSR2", "SIGTERM"]
    assert cluster.interruption(exit_info.value, seen) == "interrupted by SIGUSR2: time limit or preemption; submitit requeued the job"
    assert cluster.interruption(KeyboardInterrupt(), ["SIGINT"]) == "interrupted by SIGINT"


def test_a_failed_record_never_replaces_an_ok_one(tmp_path):
    ok = {"run_id": "r1", "status": "ok", "error": None}
    results.write(tmp_path, ok)
    results.write(tmp_path, {"run_id": "r1", "status": "failed", "error": "CUDA out of memory"})
    assert results.read(tmp_path, "r1") == ok
    (kept,) = (tmp_path / "superseded").glob("r1.*.json")
    assert json.loads(kept.read_text())["error"] == "CUDA out of memory"  # kept, not lost
    results.write(tmp_path, {"run_id": "r1", "status": "failed", "error": "again"}, force=True)
    assert results.read(tmp_path, "r1")["error"] == "again"


def _write_many(results_dir, writer, n):
    for i in range(n):
        results.write(results_dir, {"run_id": "same", "status": "ok", "error": None, "writer": writer, "i": i})


def test_concurrent_writers_of_one_record_lose_nothing(tmp_path):
    writers, n = 4, 40
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(tmp_path, w, n)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * writers
    kept = [json.loads(p.read_text()) for p in (tmp_path / "superseded").glob("*.json")]
    current = results.read(tmp_path, "same")
    assert sorted((r["writer"], r["i"]) for r in [*kept, current]) == [(w, i) for w in range(writers) for i in range(n)]


def test_hydra_folders_are_unique_per_launch(hydra_cfg):
    from hydra import compose, initialize_config_module

    with initialize_config_module("harness.conf", version_base="1.3"):
        cfg = compose("config", overrides=["results_dir=r"], return_hydra_config=True)
    mine = f"{socket.gethostname()}-{os.getpid()}"
    for folder in (cfg.hydra.run.dir, cfg.hydra.sweep.dir):
        assert re.search(r"\d\d-\d\d-\d\d-\d{6}_", folder) and folder.endswith(mine), folder


def test_sweep_where_every_point_fails_exits_nonzero_with_a_summary(tmp_path):
    empty = tmp_path / "no-wikitext-here"
    empty.mkdir()
    proc = run_cli("-m", *TINY, "method=none", "tasks=[wikitext2]", f"data_paths.wikitext2={empty}", "seed=0,1",
                   results_dir=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "summary: 0 done, 0 skipped (done before or running elsewhere), 0 running elsewhere, 2 failed, 0 invalid" in proc.stderr
    assert proc.stderr.count("failed: ") == 2 and "no files for split 'test'" in proc.stderr
    assert [r["status"] for r in records(tmp_path)] == ["failed", "failed"]
