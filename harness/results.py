"""Results: one JSON record per run under `<results_dir>/runs/<run_id>.json`, and a table of them all.

The run id is a hash of the normalized experiment config, so a run is found again by what it is.
Records are written atomically (temporary file, then rename). A record is never deleted: when a run is
repeated (`force=true`, or after a failure) the previous record moves to `<results_dir>/superseded/`.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

RUNS = "runs"
SUPERSEDED = "superseded"


def run_id(config: dict[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def record_path(results_dir: str, rid: str) -> Path:
    return Path(results_dir) / RUNS / f"{rid}.json"


def read(results_dir: str, rid: str) -> dict[str, Any] | None:
    path = record_path(results_dir, rid)
    return json.loads(path.read_text()) if path.exists() else None


def write(results_dir: str, record: dict[str, Any]) -> Path:
    """Atomically write the record of `record['run_id']`, keeping any earlier one in superseded/."""
    path = record_path(results_dir, record["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        kept = Path(results_dir) / SUPERSEDED / f"{record['run_id']}.{time.time_ns()}.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, kept)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{record['run_id']}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(paths: str | Path | list[str | Path] = "results") -> pd.DataFrame:
    """One row per run of one results folder or a list of them: run_id, status, error, and config.*,
    metrics.*, stats.*, timings.*, env.*, latency.* columns."""
    folders = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows = []
    for path in sorted(p for folder in folders for p in (Path(folder) / RUNS).glob("*.json")):
        record = json.loads(path.read_text())
        row = {key: record.get(key) for key in ("run_id", "status", "error", "finished_at")}
        for section in ("config", "metrics", "stats", "timings", "env", "latency"):
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
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "host": socket.gethostname(),
        "git_commit": _git_commit(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
