"""Experiment trackers a run is reported to besides its record: `logger=none` (default) or
`logger=wandb` (conf/logger/).

wandb gets each run's resolved config, its metrics, stats, timings and latency (logged once, so also
in the run's summary), its status and provenance (summary), and the record file itself (an artifact
of type `run-record`). Runs of one Hydra sweep share a wandb group named after the sweep's folder,
unless `logger.group` names one. `logger.mode`: `offline` (default; the run is written under
`logger.dir`, by default the record's results_dir, and uploaded later with `wandb sync <dir>/wandb/offline-run-*`),
`online`, or `disabled`.

Logging comes after the record is written and never fails or changes the run: a wandb error (no
network, a bad key, a bug) is logged as a warning naming the record, which stays as it is.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness import results
from harness.config import ConfigError

log = logging.getLogger("harness")
MODES = ("offline", "online", "disabled")


def settings(logger: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The validated settings of a `logger` config (conf/logger/*.yaml); None when nothing is logged.
    Raises ConfigError on a bad value, before any run starts."""
    if logger is None:
        return None
    values = OmegaConf.to_container(logger, resolve=True) if isinstance(logger, DictConfig) else dict(logger)
    if values.get("name") == "none":
        return None
    if values.get("name") != "wandb":
        raise ConfigError(f"logger={values.get('name')!r}: expected none or wandb")
    if values.get("mode") not in MODES:
        raise ConfigError(f"logger.mode={values.get('mode')!r}: expected one of {', '.join(MODES)}")
    timeout = values.get("init_timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"logger.init_timeout={timeout!r}: must be a positive number of seconds")
    return None if values["mode"] == "disabled" else values


def log_run(logger: dict[str, Any] | None, record: dict[str, Any], record_file: Path) -> Path | None:
    """Report one run, whose record is already written at `record_file`. Returns the local wandb run
    folder, or None when nothing was logged (logging off, or wandb failed: a warning says why)."""
    if logger is None or record.get("status") not in ("ok", "failed"):
        return None  # an interrupted run is being stopped: no time for a tracker
    try:
        with _wandb_run(logger, Path(logger.get("dir") or record_file.parent.parent), group=logger.get("group") or sweep_group(),
                        name=record["run_id"], job_type=record["config"]["method"]["name"], config=record["config"]) as run:
            run.log(_numbers(record))
            run.summary.update({key: record.get(key) for key in ("run_id", "status", "error", "schema_version", "started_at", "finished_at")})
            run.summary["env"] = record.get("env")
            _log_record_file(run, record, record_file)
            return Path(run.dir).parent
    except Exception as err:  # wandb's own errors included: never the run's failure
        log.warning("wandb logging of run %s failed (its record is safe at %s): %s: %s",
                    record.get("run_id"), record_file, type(err).__name__, err)
        return None


def log_table(df: pd.DataFrame, name: str, cfg: Mapping[str, Any] | None = None) -> Path | None:
    """Log `df` (e.g. the leaderboard) as the wandb Table `name`, in a wandb run of its own (job type
    `leaderboard`). `cfg` overrides conf/logger/wandb.yaml's settings: mode, project, entity, group,
    tags, init_timeout, dir (default: the working directory). Returns the local wandb run folder, or
    None (disabled, or wandb failed: a warning says why; the caller's own output is not affected)."""
    logger = settings(wandb_defaults() | dict(cfg or {}))
    if logger is None:
        return None
    try:
        import wandb

        with _wandb_run(logger, Path(logger.get("dir") or "."), group=logger.get("group"), name=name, job_type="leaderboard") as run:
            run.log({name: wandb.Table(dataframe=_table_safe(df))})
            return Path(run.dir).parent
    except Exception as err:
        log.warning("wandb logging of table %s failed: %s: %s", name, type(err).__name__, err)
        return None


def wandb_defaults() -> dict[str, Any]:
    """conf/logger/wandb.yaml as a dict."""
    text = resources.files("harness.conf").joinpath("logger", "wandb.yaml").read_text()
    return OmegaConf.to_container(OmegaConf.create(text), resolve=True)


def sweep_group() -> str | None:
    """The folder of the Hydra sweep this process runs a point of (relative to the working directory
    when inside it), or None outside a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(HydraConfig.get().runtime.output_dir).parent  # a point's folder is <sweep dir>/<job number>
    try:
        return str(sweep_dir.relative_to(Path.cwd()))
    except ValueError:
        return str(sweep_dir)


@contextmanager
def _wandb_run(logger: dict[str, Any], folder: Path, **init: Any):
    import wandb

    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=logger.get("project"), entity=logger.get("entity"), mode=logger["mode"], dir=os.fspath(folder),
        tags=list(logger.get("tags") or []), reinit="create_new",
        settings=wandb.Settings(init_timeout=float(logger["init_timeout"]), console="off", quiet=True), **init,
    )
    try:
        yield run
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    if logger["mode"] == "offline":
        log.info("wandb: logged offline; upload with: wandb sync %s", Path(run.dir).parent)


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    """Metrics under their own names ('pydoc/ppl'), stats, timings and latency under 'stats/...',
    'timings/...', 'latency/...' (wandb groups charts by the part before the first '/'): every number."""
    values = dict(record.get("metrics") or {})
    for section in ("stats", "timings", "latency"):
        values.update((key.replace(".", "/", 1), value) for key, value in results.flatten(record.get(section) or {}, section).items())
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _log_record_file(run, record: dict[str, Any], record_file: Path) -> None:
    import wandb

    artifact = wandb.Artifact(f"record-{record['run_id']}", type="run-record",
                              metadata={"run_id": record["run_id"], "status": record.get("status")})
    artifact.add_file(os.fspath(record_file), name="record.json")
    run.log_artifact(artifact)


def _table_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Cells a wandb Table takes: a column mixing types (lists, None, numbers) becomes text."""
    out = df.copy()
    for column in out.columns[out.dtypes == object]:
        kinds = {type(v) for v in out[column] if v is not None and v == v}
        if len(kinds) > 1 or kinds - {str, int, float, bool}:
            out[column] = [None if v is None or v != v else str(v) for v in out[column]]
    return out
