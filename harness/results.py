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
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

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
    return _hash(identity(config))


def _hash(tree: dict[str, Any]) -> str:
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def record_path(results_dir: str, rid: str) -> Path:
    return Path(results_dir) / RUNS / f"{rid}.json"


def read_record(path: Path) -> dict[str, Any]:
    """One record file as written, checked by `normalize`; raises CorruptRecord naming the file and
    what is wrong with it (FileNotFoundError if there is none)."""
    try:
        record = json.loads(Path(path).read_bytes())
        normalize(record)
        return record
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptRecord(Path(path), _reason(err)) from None


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


# --- the schema and the table of many records ----------------------------------------------------

# Version 1 added `schema_version` and `latency` (null until measured); records written before carry
# no schema_version and read as version 0. README.md ("Results") documents every column.
SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "interrupted")
# A record's keys with their empty values: what an older record lacks reads as these.
EMPTY_RECORD = {
    "schema_version": 0, "error": None, "started_at": None, "finished_at": None, "attempt": None, "job": None,
    "config": {}, "env": {}, "metrics": {}, "stats": {}, "timings": {}, "tasks": {}, "latency": None,
}
SCALARS = ("run_id", "status", "error", "schema_version", "started_at", "finished_at", "attempt")
SECTIONS = ("config", "metrics", "stats", "timings", "env", "latency", "job", "tasks")
# Columns every table has, in this order, empty where no record carries them (older records, runs
# without calibration or latency), so tables of any records line up; per-task columns follow, sorted.
COLUMNS = (
    "run_id", "status", "error", "config.model.name", "config.method.name", "config.bits", "config.group_size",
    "config.symmetric", "config.sparsity", "config.sparsity_pattern", "config.calib.dataset",
    "config.calib.n_samples", "config.calib.seqlen", "config.calib.seed", "config.seed", "config.tasks",
    "config.seqlen", "config.max_eval_tokens", "config.max_samples", "config.device", "config.dtype",
    "stats.bits_per_weight", "stats.compressed_bytes", "stats.dense_bytes", "stats.sparsity",
    "stats.compressed_layers", "stats.compressed_params", "stats.calib_s", "stats.calib_blocks",
    "stats.calib_tokens", "stats.calib_peak_cuda_bytes", "stats.calib_peak_rss_bytes",
    "latency.available", "latency.reason", "latency.kernel", "latency.kernel_version", "latency.device", "latency.compiled", "latency.compile_error",
    "latency.prompt_len", "latency.prefill_ms", "latency.decode_tokens_per_s.1", "latency.decode_tokens_per_s.16",
    "latency.peak_gpu_bytes", "latency.weight_bytes",
    "timings.prepare_s", "timings.load_s", "timings.compress_s",
    "env.python", "env.torch", "env.transformers", "env.cuda", "env.gpu", "env.cpu_threads", "env.host",
    "env.git_commit", "schema_version", "started_at", "finished_at", "attempt", "path", "copies",
)


class LoadError(NamedTuple):
    """A record file `load` skipped, and why."""

    path: str
    reason: str


def normalize(record: Any) -> dict[str, Any]:
    """`record` in the current schema, or ValueError saying why it is no record.

    A record needs a run_id and a status; older versions differ only by keys they lack, which read as
    empty (EMPTY_RECORD), so version 0 needs no other change. `schema_version` stays what the record
    was written with. A record newer than this code is refused rather than misread."""
    if not isinstance(record, dict):
        raise ValueError(f"not a record: a JSON {type(record).__name__}, not an object")
    if not isinstance(record.get("run_id"), str) or not record["run_id"]:
        raise ValueError("not a record: no run_id")
    if record.get("status") not in STATUSES:
        raise ValueError(f"not a record: status {record.get('status')!r} is none of {', '.join(STATUSES)}")
    version = record.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"schema_version {version!r} is newer than this harness reads ({SCHEMA_VERSION}): update it")
    for section in SECTIONS:
        if not isinstance(record.get(section) or {}, dict):
            raise ValueError(f"not a record: its {section} is a JSON {type(record[section]).__name__}, not an object")
    if version == 0 and isinstance(record.get("config"), dict) and record["run_id"] == _hash(record["config"]):
        # Version 0 hashed every config key into the run id; today's id hashes what changes the result,
        # so an old record is found again as the same experiment as a new one.
        record = record | {"run_id": run_id(record["config"])}
    return EMPTY_RECORD | record


def load(paths: str | os.PathLike | Iterable[str | os.PathLike] = "results", errors: list[LoadError] | None = None) -> pd.DataFrame:
    """One row per run from one results folder or several (hosts, sweeps, days): the columns COLUMNS,
    then `config.*`, `metrics.*`, `stats.*`, `timings.*`, `env.*`, `latency.*`, `job.*` and `tasks.*`
    (what each task measured, less per-sample lists) flattened, with `.` between levels.

    A folder is a results_dir (records under runs/) or a runs/ folder itself. Records of one run id
    found more than once (the same experiment on two hosts, or copied folders) make one row: the
    latest ok record wins, by finished_at; a run with no ok record shows its latest record. `copies`
    counts the records found for the run id, `path` names the file shown.

    A record that cannot be read (truncated or corrupt JSON, not a JSON object, no run_id or status,
    a newer schema) is skipped, never fatal: each is logged as a warning and listed as
    LoadError(path, reason) in `df.attrs["load_errors"]` and, if given, appended to `errors`."""
    folders = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    chosen: dict[str, tuple[dict[str, Any], Path]] = {}
    copies: dict[str, int] = {}
    skipped: list[LoadError] = []
    for path in _record_files(folders):
        try:
            record = normalize(read_record(path))
        except (CorruptRecord, OSError) as err:
            skipped.append(LoadError(str(path), err.reason if isinstance(err, CorruptRecord) else _reason(err)))
            log.warning("skipped record %s: %s", path, skipped[-1].reason)
            continue
        rid = record["run_id"]
        copies[rid] = copies.get(rid, 0) + 1
        if rid not in chosen or _rank(record, path) > _rank(*chosen[rid]):
            chosen[rid] = (record, path)
    rows = [_row(*chosen[rid]) | {"copies": copies[rid]} for rid in sorted(chosen)]
    table = pd.DataFrame.from_records(rows)
    table = table.reindex(columns=[*COLUMNS, *sorted(set(table.columns) - set(COLUMNS))])
    table.attrs["load_errors"] = skipped
    if errors is not None:
        errors.extend(skipped)
    return table


def _record_files(folders: list[str | os.PathLike]) -> list[Path]:
    """Every *.json under each folder's runs/ (or the folder itself), each file once."""
    files: dict[Path, None] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"results folder {folder} does not exist")
        runs = (folder / RUNS if (folder / RUNS).is_dir() else folder).resolve()
        found = sorted(runs.glob("*.json"))
        if not found:
            log.warning("no records in %s (looked for %s/*.json)", folder, runs)
        files.update(dict.fromkeys(found))
    return list(files)


def _reason(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        return "empty file" if not err.doc.strip() else f"not valid JSON (truncated or corrupt): {err}"
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text: {err}"
    if isinstance(err, OSError):
        return f"cannot read: {err.strerror or err}"
    return str(err)


def _rank(record: dict[str, Any], path: Path) -> tuple[bool, datetime, str]:
    """Of two records of one run: an ok one first, then the later one (across hosts' time zones)."""
    try:
        finished = datetime.fromisoformat(record["finished_at"])
    except (TypeError, ValueError):
        finished = datetime.min  # unknown: the oldest
    if finished.tzinfo is None:  # no UTC offset: taken as UTC
        finished = finished.replace(tzinfo=timezone.utc)
    return record["status"] == "ok", finished, str(path)


def _row(record: dict[str, Any], path: Path) -> dict[str, Any]:
    row = {key: record[key] for key in SCALARS}
    for section in SECTIONS:
        row.update(flatten(record[section] or {}, section, lists=section != "tasks"))
    row["path"] = str(path)
    return row


def flatten(tree: dict[str, Any], prefix: str, lists: bool = True) -> dict[str, Any]:
    """{a: {b: 1}} -> {prefix.a.b: 1}; without `lists`, list values (per-sample examples) are left out."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name, lists))
        elif lists or not isinstance(value, list):
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
