"""Sweeps on a real Slurm, through `hydra/launcher=submitit_slurm`, on the tiny model.

`.ci/run` starts a single-node Slurm on loopback first (tests/slurm/start_slurm.sh up). Where that
was not possible (not root, no Debian packages) these tests skip with the reason.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY, records

SLURM_DIR = Path("/tmp/slurm-ci")
# One CPU and 1 GB per job: the 2-core CI machine runs two grid points at once.
LAUNCHER = ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


def _slurm_unavailable() -> str | None:
    reason = SLURM_DIR / "unavailable"
    if reason.exists():
        return f"no Slurm: {reason.read_text().strip()}"
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"no Slurm ({err}); start one with: bash tests/slurm/start_slurm.sh up (as root)"
    if state.returncode or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
        return f"Slurm has no usable node (sinfo: {state.stdout.strip() or state.stderr.strip()})"
    return None


pytestmark = pytest.mark.skipif(_slurm_unavailable() is not None, reason=str(_slurm_unavailable()))


def launch(results_dir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harness", "-m", *LAUNCHER, *overrides, f"results_dir={results_dir}"]  # later ones win
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=900)
    return proc.returncode, out + err


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def status(results_dir: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", "status", str(results_dir), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_grid_of_four_gives_four_ok_records_with_their_jobs(tmp_path):
    code, output = finish(launch(tmp_path, *TINY, "method=rtn", "bits=3,4", "group_size=32,64"))
    assert code == 0, output[-4000:]
    assert "summary: 4 done" in output
    found = records(tmp_path)
    assert [r["status"] for r in found] == ["ok"] * 4
    jobs = [r["job"] for r in found]
    assert {j["scheduler"] for j in jobs} == {"submitit_slurm"} and len({j["job_id"] for j in jobs}) == 4
    assert len({j["array_job_id"] for j in jobs}) == 1 and sorted(j["array_task_id"] for j in jobs) == ["0", "1", "2", "3"]
    assert all(Path(j["log"]).exists() and j["restart_count"] == 0 for j in jobs)
    assert status(tmp_path)["counts"] == {"done": 4}


def test_a_raising_point_is_recorded_failed_and_the_others_finish(tmp_path):
    empty = tmp_path / "no-wikitext-here"
    empty.mkdir()
    code, output = finish(launch(tmp_path, *TINY, "method=none", "tasks=[pydoc],[wikitext2]", f"data_paths.wikitext2={empty}"))
    assert code == 1, output[-4000:]
    assert "summary: 1 done, 0 skipped (done before or running elsewhere), 0 running elsewhere, 1 failed, 0 invalid" in output
    failed, ok = sorted(records(tmp_path), key=lambda r: r["status"])
    assert ok["status"] == "ok" and failed["status"] == "failed" and "no files for split 'test'" in failed["error"]
    assert f"[job {failed['job']['job_id']}, log {failed['job']['log']}]" in output
    assert "no files for split 'test'" in Path(failed["job"]["log"]).read_text()  # the traceback is in the job's log


def test_a_cancelled_job_is_completed_by_a_relaunch_without_duplicates(tmp_path):
    grid = [*TINY, "method=none", "max_eval_tokens=40000,40001"]  # two points of ~20 s each
    proc = launch(tmp_path, *grid)
    claims = tmp_path / "claims"
    claim = wait_for(lambda: next(iter(claims.glob("*.lock")), None), 300, "a point to be claimed by its job")
    victim = json.loads(wait_for(claim.read_text, 10, "the claim's owner"))["job_id"]
    # SIGKILL at once: a plain scancel sends SIGTERM, which submitit's bypass handler ignores, and the job
    # ends only at Slurm's SIGKILL KillWait (5 s) later, by which time a fast machine has finished the point.
    subprocess.run(["scancel", "--full", "--signal=KILL", victim], check=True)
    code, output = finish(proc)
    assert code == 1, output[-4000:]
    before = records(tmp_path)
    assert [r["status"] for r in before] == ["ok"]
    states = {p["run_id"]: p for p in status(tmp_path)["points"]}
    assert states[claim.stem]["state"] == "lost" and f"job {victim}" in states[claim.stem]["detail"]  # its holder is gone
    code, output = finish(launch(tmp_path, *grid))
    assert code == 0, output[-4000:]
    assert "plan: 2 points: 1 done, 0 invalid, 0 running elsewhere, 0 failed before (retried), 1 to launch" in output
    after = records(tmp_path)
    assert [r["status"] for r in after] == ["ok", "ok"] and before[0] in after
    assert not (tmp_path / "superseded").exists()  # nothing ran twice
    (lost,) = (claims / "lost").glob(f"{claim.stem}.*.lock")
    assert json.loads(lost.read_text())["job_id"] == victim
    print(f"resume counts: records before the kill 1, after the relaunch {len(after)}, duplicates 0, lost 0")


def test_a_job_at_its_time_limit_is_requeued_then_recorded_failed(tmp_path):
    # A 1-minute limit, SIGUSR2 5 s before it (Slurm signals on a 30 s tick: 25-55 s after the start),
    # one requeue allowed; the point (Wanda calibration on 128 x 2048 tokens through a 1024-wide random
    # model, then the whole pydoc test half) takes minutes even on an idle machine, so both attempts
    # reach the limit. (On the 64-wide test model it finished inside the minute when the CPU was idle.)
    proc = launch(tmp_path, "model=tiny-random", "model.random.hidden_size=1024", "model.random.intermediate_size=4096",
                  "method=wanda", "sparsity=0.5", "seqlen=2048", "max_eval_tokens=10000000",
                  "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=5", "hydra.launcher.max_num_timeout=1")

    def requeued_job():
        queue = subprocess.run(["squeue", "-h", "-o", "%i %r"], capture_output=True, text=True).stdout.split()
        return queue[0] if queue[1:2] == ["BeginTime"] else None

    job = wait_for(requeued_job, 300, "the job to be requeued")
    # Slurm holds a requeued job back for two minutes; release it now.
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    code, output = finish(proc)
    assert code == 1, output[-4000:]
    (record,) = records(tmp_path)
    assert record["status"] == "failed" and "timed-out too many times" in record["error"], record["error"]
    assert record["job"]["job_id"] == job and record["job"]["restart_count"] == 1
    states = subprocess.run(["sacct", "-j", job, "-D", "-X", "-n", "-o", "State"], capture_output=True, text=True).stdout.split()
    assert states[0] == "REQUEUED", states
    for kept in (tmp_path / "superseded").glob("*.json"):  # the first attempt, if it got as far as its run
        assert json.loads(kept.read_text())["error"] == "interrupted by SIGUSR2: time limit or preemption; submitit requeued the job"
