"""Lock files on a shared results directory: who runs a grid point now, and who writes a record.

A lock is a file created with O_CREAT | O_EXCL (atomic on local disks, NFSv3+, Lustre, GPFS, BeeGFS)
holding its owner (host, pid, Slurm job). Its holder refreshes the file's mtime (the heartbeat) while
it lives. A lock is stale, and may be taken over, when
  * it was left by an earlier attempt of the very Slurm job that asks (a requeued job),
  * its owner ran on this host and that process is gone,
  * its owner was a Slurm job that Slurm no longer lists as running, or
  * its heartbeat is older than `stale_after_s` (an owner on another host without Slurm, or a hung one).
Taking over happens under a second, short-lived lock (`<lock>.break`), and the stale file is kept
under `lost/` beside it, so two takers cannot both win and the loss stays visible.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import cluster

log = logging.getLogger("harness")
LOST = "lost"


def owner() -> dict[str, Any]:
    """Who asks for a lock: this process, on this host, in this Slurm job (if any)."""
    job = cluster.job_info()
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "job_id": job and job["job_id"],
            "scheduler": job and job["scheduler"], "restart_count": job and job["restart_count"]}


class Lock:
    def __init__(self, path: Path, stale_after_s: float) -> None:
        self.path = Path(path)
        self.stale_after_s = stale_after_s
        self._me: dict[str, Any] | None = None
        self._beat: threading.Event | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free or stale; False if a live owner holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            return True
        held = self.holder()
        reason = held and self.stale_reason(held)
        if not reason:
            return False
        return self._break(held, reason) and self._create()

    @contextmanager
    def held(self, wait_s: float = 120.0):
        """Wait for the lock (polling), hold it for the block."""
        deadline = time.monotonic() + wait_s
        while not self.acquire():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.path} is held by {self.holder()}")
            time.sleep(0.02)
        try:
            yield self
        finally:
            self.release()

    def holder(self) -> dict[str, Any] | None:
        """The owner written in the lock file, with its heartbeat's age; None if there is no lock."""
        try:
            info = json.loads(self.path.read_text() or "{}")
            info["heartbeat_age_s"] = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # caught between create and write: a live owner, seconds old
            info = {"heartbeat_age_s": time.time() - self.path.stat().st_mtime}
        return info

    def stale_reason(self, held: dict[str, Any]) -> str | None:
        me = owner()
        if held.get("job_id") and held["job_id"] == me["job_id"] and held.get("pid") != me["pid"]:
            return f"left by an earlier attempt of Slurm job {held['job_id']}"
        if held.get("host") == me["host"] and held.get("pid") and not _alive(held["pid"]):
            return f"process {held['pid']} on {held['host']} is gone"
        if held.get("job_id") and "slurm" in str(held.get("scheduler")):
            state = cluster.slurm_job_state(held["job_id"])
            if state is not None and state not in cluster.SLURM_LIVE_STATES:
                return f"Slurm job {held['job_id']} is {state}"
        if held["heartbeat_age_s"] > self.stale_after_s:
            return f"no heartbeat for {held['heartbeat_age_s']:.0f} s (stale after {self.stale_after_s:.0f} s)"
        return None

    def release(self) -> None:
        if self._beat:
            self._beat.set()
            self._beat = None
        if self._me is not None and self._is_mine():
            self.path.unlink(missing_ok=True)
        self._me = None

    def start_heartbeat(self) -> None:
        """Refresh the lock's mtime every quarter of `stale_after_s` until released."""
        stop = self._beat = threading.Event()

        def beat() -> None:
            while not stop.wait(self.stale_after_s / 4):
                try:
                    if not self._is_mine():
                        raise FileNotFoundError(self.path)
                    os.utime(self.path)
                except FileNotFoundError:
                    log.warning("lock %s was taken over by another process", self.path)
                    return

        threading.Thread(target=beat, name=f"heartbeat {self.path.name}", daemon=True).start()

    def _create(self) -> bool:
        me = owner()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        self._me = me
        return True

    def _is_mine(self) -> bool:
        held = self.holder()
        return bool(held and self._me and held.get("pid") == self._me["pid"] and held.get("since") == self._me["since"])

    def _break(self, held: dict[str, Any], reason: str) -> bool:
        """Move a stale lock to lost/, under the break lock; False if another process is breaking it."""
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            age = time.time() - _mtime(breaker)
            if age > 30:  # a breaker died between two renames: the break lock itself is stale
                breaker.unlink(missing_ok=True)
            return False
        try:
            again = self.holder()
            if again is None or {k: again.get(k) for k in ("pid", "since")} != {k: held.get(k) for k in ("pid", "since")}:
                return again is None  # someone else took over (or it was released) in between
            lost = self.path.parent / LOST / f"{self.path.stem}.{time.time_ns()}{self.path.suffix}"
            lost.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, lost)
            log.warning("took over stale lock %s: %s (kept as %s)", self.path, reason, lost)
            return True
        finally:
            breaker.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
