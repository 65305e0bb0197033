"""Results: one JSON record per run under `<results_dir>/runs/<run_id>.json`, and a table of them all.

The run id is a hash of what can change a run's result (`identity`), so a run is found again by what
it is. Records are written atomically (temporary file, then rename) under a short write lock, so two
writers of one record cannot race. A record is never deleted: when a run is repeated (`force=true`,
or after a failure) the previous record moves to `<results_dir>/superseded/`; a failed or interrupted
record never replaces an ok one (it goes to superseded/ itself) unless `force`. While a run computes,
it holds a claim on its point (`claims.py`), so that two jobs never run one point at once.
"""
from __future__ import annotations

import hashlib
import functools
import json
import logging
import os
import platform
import socket
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from harness.claims import Lock

RUNS = "runs"
SUPERSEDED = "superseded"
CLAIMS = "claims"
log = logging.getLogger("harness")
# Top-level keys that each task resolves into its own entry of `task_specs` (where they matter at all):
# the specs carry what changes a result, so these are left out of the identity.
RESOLVED_INTO_TASKS = ("seqlen", "max_eval_tokens", "max_samples", "eval_batch_size", "judge", "lm_eval_include_path", "data_paths")
# Task settings that say where data is read from or how many prompts share a model call, not what is measured.
NOT_MEASURED = ("data_path", "batch_size")
# The packages whose version can change a result; recorded with the git commit as the code version.
CODE_PACKAGES = ("torch", "transformers", "hqq", "bitsandbytes", "lm_eval", "datasets")


class CorruptRecord(ValueError):
    """A record file that cannot be read back (truncated, not JSON, no status)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a normalized config that can change the result: what the run id hashes."""
    kept = {k: v for k, v in config.items() if k not in RESOLVED_INTO_TASKS}
    if isinstance(config.get("task_specs"), dict):
        kept["task_specs"] = {
            name: {k: v for k, v in spec.items() if k not in NOT_MEASURED} for name, spec in config["task_specs"].items()
        }
    return kept


def run_id(config: dict[str, Any]) -> str:
    canonical = json.dumps(identity(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def record_path(results_dir: str, rid: str) -> Path:
    return Path(results_dir) / RUNS / f"{rid}.json"


def read_record(path: Path) -> dict[str, Any]:
    """One record file; raises CorruptRecord naming the file and what is wrong with it."""
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptRecord(Path(path), f"not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("status") not in ("ok", "failed", "interrupted"):
        raise CorruptRecord(Path(path), "no status (a record written before its run finished?)")
    return record


def read(results_dir: str, rid: str) -> dict[str, Any] | None:
    """The record of run `rid`, None if there is none; CorruptRecord if its file cannot be read."""
    path = record_path(results_dir, rid)
    try:
        return read_record(path)
    except FileNotFoundError:
        return None


def claim_path(results_dir: str, rid: str) -> Path:
    return Path(results_dir) / CLAIMS / f"{rid}.lock"


def reusable(results_dir: str, rid: str, force: bool = False, rerun_stale: bool = False) -> dict[str, Any] | None:
    """The ok record that makes running `rid` again unnecessary, or None (also for an unreadable one)."""
    try:
        previous = read(results_dir, rid)
    except CorruptRecord as err:
        log.warning("record %s: point treated as missing (the file moves to superseded/ when it reruns)", err)
        return None
    if not previous or previous["status"] != "ok" or force:
        return None
    if rerun_stale and is_stale(previous):
        log.info("run %s finished ok with other code (%s); running it again (rerun_stale=true)", rid, stale_reason(previous))
        return None
    log.info("run %s already finished ok (%s); skipping (force=true to run again)", rid, record_path(results_dir, rid))
    return previous


def stale_reason(record: dict[str, Any]) -> str | None:
    """How the code that made `record` differs from the code running now; None if it does not."""
    then, now = (record.get("env") or {}).get("code") or {}, code_version()
    changed = [key for key in ("git_commit", "git_diff_sha") if then.get(key) != now[key]]
    changed += [name for name in CODE_PACKAGES if (then.get("packages") or {}).get(name) != now["packages"][name]]
    return ", ".join(f"{key} {_short(then, key)} -> {_short(now, key)}" for key in changed) or None


def is_stale(record: dict[str, Any]) -> bool:
    return stale_reason(record) is not None


def _short(code: dict[str, Any], key: str) -> str | None:
    value = code.get(key, (code.get("packages") or {}).get(key))
    return value[:12] if key == "git_commit" and value else value


def attempts(results_dir: str, rid: str) -> int:
    """How many records of `rid` exist, kept ones included: the next run is attempt attempts() + 1."""
    kept = len(list((Path(results_dir) / SUPERSEDED).glob(f"{rid}.*.json")))
    return kept + record_path(results_dir, rid).exists()


def write(results_dir: str, record: dict[str, Any], force: bool = False) -> Path:
    """Atomically write the record of `record['run_id']`, keeping any earlier one in superseded/.

    A record that is not ok never replaces an ok one unless `force`: it is kept in superseded/ instead.
    Returns the path the record landed at.
    """
    path = record_path(results_dir, record["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with Lock(path.with_name(f".{path.name}.lock"), stale_after_s=60).held():
        current = _current_status(path)
        if current == "ok" and record.get("status") != "ok" and not force:
            return _atomic_dump(record, _superseded_path(results_dir, record["run_id"]))
        if current is not None:
            os.replace(path, _superseded_path(results_dir, record["run_id"]))
        return _atomic_dump(record, path)


def _current_status(path: Path) -> str | None:
    """Status of the record at `path`; "corrupt" for an unreadable one, None if there is none."""
    try:
        return read_record(path)["status"]
    except FileNotFoundError:
        return None
    except CorruptRecord:
        return "corrupt"


def _superseded_path(results_dir: str, rid: str) -> Path:
    kept = Path(results_dir) / SUPERSEDED / f"{rid}.{time.time_ns()}.json"
    kept.parent.mkdir(parents=True, exist_ok=True)
    return kept


def _atomic_dump(record: dict[str, Any], path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{record['run_id']}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(results_dir: str = "results") -> pd.DataFrame:
    """One row per run: run_id, status, error, and config.*, metrics.*, stats.*, timings.*, env.* columns."""
    rows = []
    for path in sorted((Path(results_dir) / RUNS).glob("*.json")):
        record = json.loads(path.read_text())
        row = {key: record.get(key) for key in ("run_id", "status", "error", "finished_at")}
        for section in ("config", "metrics", "stats", "timings", "env"):
            row.update(_flatten(record.get(section) or {}, section))
        rows.append(row)
    return pd.DataFrame(rows)


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def environment() -> dict[str, Any]:
    import torch

    code = dict(code_version())
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "host": socket.gethostname(),
        "git_commit": code["git_commit"] and code["git_commit"] + ("-dirty" if code["git_dirty"] else ""),
        "code": code,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """What code produced a record: git commit, whether (and how) the tree was dirty, package versions.

    Records whose code version differs from the running code's are stale (`python -m harness.sweep status`).
    """
    commit = _git("rev-parse", "HEAD")
    diff = _git("diff", "HEAD") if commit else None
    return {
        "git_commit": commit,
        "git_dirty": bool(diff),
        "git_diff_sha": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else None,
        "harness": _version("compression-harness"),
        "packages": {name: _version(name.replace("_", "-")) for name in CODE_PACKAGES},
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
