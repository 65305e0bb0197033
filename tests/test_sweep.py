"""Sweeps without a cluster: the plan before launching, claims on a point, status, submitit's local
executor, prefetch. (Slurm itself: tests/test_slurm.py.)"""
import json
import multiprocessing
import os
import subprocess
import sys
import time

from conftest import REPO, TINY, records, run_cli
from harness.claims import Lock

GRID = ["-m", *TINY, "method=rtn,magnitude", "bits=3,16", "sparsity=0,0.5"]


def sweep_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.sweep", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_dry_run_prints_the_plan_and_launches_nothing(tmp_path):
    proc = run_cli(*GRID, "dry_run=true", results_dir=tmp_path)
    assert "plan: 8 points: 0 done, 5 invalid, 0 running elsewhere, 0 failed before (retried), 3 to launch" in proc.stderr
    assert proc.stderr.count("  invalid: ") == 5 and "method=rtn does not prune" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_status_of_a_grid_names_every_point(tmp_path):
    run_cli(*TINY, "method=rtn", "bits=3", results_dir=tmp_path)
    proc = sweep_cli("status", str(tmp_path), "--grid", *GRID[1:], "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["counts"] == {"done": 1, "missing": 2, "invalid": 5}
    (done,) = [p for p in report["points"] if p["state"] == "done"]
    assert "bits=3" in done["point"] and "method=rtn" in done["point"] and done["run_id"]
    text = sweep_cli("status", str(tmp_path)).stdout
    assert text.startswith(f"{tmp_path}: 1 done") and "method=rtn bits=3 group_size=64" in text


def test_a_live_claim_is_respected_and_a_dead_one_taken_over(tmp_path):
    path = tmp_path / "claims" / "r1.lock"
    first, second = Lock(path, stale_after_s=600), Lock(path, stale_after_s=600)
    assert first.acquire() and not second.acquire()
    assert second.holder()["pid"] == os.getpid()
    first.release()
    assert second.acquire()
    second.release()
    # a process that took the claim and exited without releasing it (as a SIGKILL would leave it)
    child = subprocess.Popen([sys.executable, "-c", f"from harness.claims import Lock; Lock({str(path)!r}, 600).acquire()"])
    assert child.wait() == 0 and json.loads(path.read_text())["pid"] == child.pid
    taker = Lock(path, stale_after_s=600)
    assert taker.stale_reason(taker.holder()) == f"process {child.pid} on {os.uname().nodename} is gone"
    assert taker.acquire()
    (lost,) = (tmp_path / "claims" / "lost").glob("r1.*.lock")
    assert json.loads(lost.read_text())["pid"] == child.pid


def test_a_claim_without_heartbeat_goes_stale(tmp_path):
    path = tmp_path / "r1.lock"
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "since": 0}))
    os.utime(path, (time.time() - 30, time.time() - 30))
    assert not Lock(path, stale_after_s=60).acquire()
    assert Lock(path, stale_after_s=10).acquire()


def _take(path, queue, done):
    queue.put(Lock(path, stale_after_s=5).acquire())
    done.wait(60)  # a winner stays alive: a lock of a process that has exited is stale again


def test_only_one_of_many_takes_over_a_stale_claim(tmp_path):
    path = tmp_path / "r1.lock"
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "since": 0}))
    os.utime(path, (time.time() - 60, time.time() - 60))
    ctx = multiprocessing.get_context("fork")
    queue, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_take, args=(path, queue, done)) for _ in range(8)]
    for p in procs:
        p.start()
    taken = sorted(queue.get(timeout=60) for _ in procs)
    done.set()
    for p in procs:
        p.join(timeout=60)
    assert taken == [False] * 7 + [True]


def test_a_double_launch_runs_the_point_once(tmp_path):
    cmd = [sys.executable, "-m", "harness", *TINY, "method=none", "max_eval_tokens=20000", f"results_dir={tmp_path}"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum(" started: attempt 1" in out for out in outputs) == 1, outputs  # the other one saw the claim or the record
    (record,) = records(tmp_path)
    assert record["status"] == "ok" and not (tmp_path / "superseded").exists()


def test_submitit_local_launcher_runs_the_grid_as_jobs(tmp_path):
    proc = run_cli("-m", *TINY, "method=rtn", "bits=3,4", "hydra/launcher=submitit_local", results_dir=tmp_path)
    assert "summary: 2 done" in proc.stderr
    jobs = [r["job"] for r in records(tmp_path)]
    assert [j["scheduler"] for j in jobs] == ["submitit_local"] * 2 and all(os.path.exists(j["log"]) for j in jobs)


def test_failed_points_are_retried_unless_told_not_to(tmp_path):
    empty = tmp_path / "no-wikitext-here"
    empty.mkdir()
    grid = ["-m", *TINY, "method=none", "tasks=[pydoc],[wikitext2]", f"data_paths.wikitext2={empty}"]
    assert run_cli(*grid, results_dir=tmp_path, check=False).returncode == 1
    skip = run_cli(*grid, "retry_failed=false", results_dir=tmp_path)
    assert "1 done" in skip.stderr and "1 failed before (skipped: retry_failed=false), 0 to launch" in skip.stderr
    retry = run_cli(*grid, results_dir=tmp_path, check=False)
    assert "1 failed before (retried), 1 to launch" in retry.stderr and retry.returncode == 1
    assert sorted(r["attempt"] for r in records(tmp_path)) == [1, 2]


def test_prefetch_needs_nothing_for_local_models_and_says_when_the_hub_is_unreachable():
    local = sweep_cli("prefetch", *TINY, "method=rtn", "bits=3,4")
    assert local.returncode == 0, local.stderr
    assert "nothing to download" in local.stdout
    env = os.environ | {"HF_ENDPOINT": "https://hub.invalid"}
    env.pop("HF_HUB_OFFLINE", None)
    hub = subprocess.run([sys.executable, "-m", "harness.sweep", "prefetch", "model=llama3-8b,qwen2.5-7b", "tasks=[wikitext2]"],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert hub.returncode == 1
    assert "model meta-llama/Meta-Llama-3-8B: cannot download: hub.invalid cannot be resolved" in hub.stderr
    assert "dataset of task wikitext2: cannot download: needs the tokenizer of Qwen/Qwen2.5-7B from the hub" in hub.stderr
