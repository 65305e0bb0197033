"""What a run knows about the cluster job it runs in, and the signals that end it.

`job_info()` is the record's `job`: scheduler, job id, array task id, log path and restart count
(from submitit's job environment, or Slurm's variables for a plain `sbatch`), None outside a cluster.
`signals_recorded()` notes which signal interrupted a run: SIGINT and SIGTERM raise `Interrupted`
where nothing else handles them, and a handler that is already installed (submitit's SIGUSR2
checkpoint-and-requeue, its SIGTERM bypass) keeps working, with its signal noted first.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from typing import Any

# Slurm job states in which a job's claims are still its own (a requeued job passes through PENDING).
SLURM_LIVE_STATES = ("RUNNING", "COMPLETING", "CONFIGURING", "PENDING", "REQUEUED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")
NOTED_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")


class Interrupted(BaseException):
    """A run stopped by a signal; a BaseException like KeyboardInterrupt, so `except Exception` lets it pass."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def job_info() -> dict[str, Any] | None:
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        env = submitit.JobEnvironment()
        paths = env.paths
        return {
            "scheduler": f"submitit_{env.cluster}",
            "job_id": env.job_id,
            "array_job_id": env.array_job_id,
            "array_task_id": env.array_task_id,
            "log": str(paths.stdout),
            "restart_count": _restart_count(),
            "node": env.hostname,
        }
    if os.environ.get("SLURM_JOB_ID"):
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return {
            "scheduler": "slurm",
            "job_id": f"{array}_{task}" if array else os.environ["SLURM_JOB_ID"],
            "array_job_id": array,
            "array_task_id": task,
            "log": None,  # sbatch --output is not visible to the job
            "restart_count": _restart_count(),
            "node": os.environ.get("SLURMD_NODENAME"),
        }
    return None


def _restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", 0))


def slurm_job_state(job_id: str) -> str | None:
    """Slurm's state of a job ("RUNNING", "COMPLETED", "GONE" if Slurm no longer knows it), None when
    no Slurm is reachable from here (then the caller decides by other means)."""
    if not shutil.which("squeue"):
        return None
    try:
        done = subprocess.run(["squeue", "-h", "-j", str(job_id), "-t", "all", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode == 0:
        return (done.stdout.split() or ["GONE"])[0]
    return "GONE" if "Invalid job id" in done.stderr else None


@contextmanager
def signals_recorded():
    """Yield a list that collects, in arrival order, the names of the noted signals received in the block."""
    seen: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = {}
    for name in NOTED_SIGNALS:
        number = getattr(signal, name)
        previous[number] = signal.getsignal(number)
        signal.signal(number, _noting(name, previous[number], seen))
    try:
        yield seen
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _noting(name: str, handler, seen: list[str]):
    def note(signum, frame):
        seen.append(name)
        if handler is signal.default_int_handler:
            raise KeyboardInterrupt
        if callable(handler):
            return handler(signum, frame)
        if handler == signal.SIG_IGN:
            return None
        raise Interrupted(name)  # SIG_DFL would end the process without a record

    return note


def interruption(err: BaseException, seen: list[str]) -> str:
    """The `error` of an interrupted record: which signal, and what became of the job.

    submitit's SIGUSR1/2 handler requeues the job with `scontrol requeue`, which makes Slurm send SIGTERM
    while that handler still runs, and then exits; so a SystemExit after a SIGUSR is the requeue whatever
    arrived after it."""
    requeue = [name for name in seen if name in ("SIGUSR1", "SIGUSR2")]
    if isinstance(err, SystemExit) and requeue:
        return f"interrupted by {requeue[0]}: time limit or preemption; submitit requeued the job"
    return f"interrupted by {seen[-1] if seen else type(err).__name__}"


def use_cache_dir(cache_dir: str | None) -> None:
    """Point the Hugging Face caches (models and datasets) at `cache_dir` for this process and every job
    it launches (jobs inherit the environment). Must run before huggingface_hub is imported."""
    if not cache_dir:
        return
    os.environ["HF_HOME"] = str(cache_dir)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        if os.path.abspath(constants.HF_HOME) != os.path.abspath(cache_dir):
            raise RuntimeError(f"cache_dir={cache_dir} set after huggingface_hub was imported (HF_HOME={constants.HF_HOME})")
