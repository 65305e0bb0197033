"""The pipeline of one experiment: config -> model -> compress -> evaluate -> record.

Everything that can be checked without weights is checked first (config values, method x compression,
task names, layer shapes on a meta-device model); a failure there is a one-line error and no record.
From the first expensive step on, any failure is recorded as a failed run and re-raised, and an
interruption (Ctrl-C, SIGTERM, a Slurm time limit or preemption) as an interrupted one. A run holds a
claim on its point while it computes, so a second launch of the same point does not run it twice.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any

import torch

from harness import cluster, compress, data, latency, loggers, models, progress, results
from harness.claims import Lock
from harness.config import ConfigError, Experiment
from harness.methods import load_method
from harness.tasks import build as build_task
from harness.tasks import resolve_specs

log = logging.getLogger("harness")


class Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 3)


def plan(cfg) -> tuple[Experiment, Any, dict[str, dict[str, Any]]]:
    """Validate everything that needs no weights. Raises ConfigError."""
    exp, method, specs = resolve(cfg)
    compress.check_shapes(compress.compressible_layers(models.skeleton(exp.config["model"])), exp.compression)
    return exp, method, specs


def resolve(cfg) -> tuple[Experiment, Any, dict[str, dict[str, Any]]]:
    """The experiment, its method and task settings, without reading the model (which may not be here yet)."""
    exp = Experiment.from_config(cfg)
    loggers.settings(exp.config.pop("logger", None))  # how a run is reported is not what it is: not in the run id
    method_cfg = dict(exp.config["method"])
    method = load_method(method_cfg.pop("name"), method_cfg)
    method.check(exp.compression)
    if method.needs_calibration:
        check_calibration(exp.config["calib"])
    else:
        exp.config["calib"] = None  # not part of what this experiment is
    exp.config["task_specs"] = resolve_specs(exp.config["tasks"], exp.config)
    latency.settle(exp.config)
    return exp, method, exp.config["task_specs"]


def check_calibration(calib: dict[str, Any]) -> None:
    if calib["dataset"] not in data.CORPORA:
        raise ConfigError(f"calib.dataset={calib['dataset']}: unknown; known: {', '.join(data.CORPORA)}")


def run(cfg) -> dict[str, Any] | None:
    """Run one experiment unless its ok record exists; None if another process is running it now."""
    exp, method, specs = plan(cfg)
    logger = loggers.settings(cfg.get("logger"))
    rid = results.run_id(exp.config)
    previous = results.reusable(exp.results_dir, rid, exp.force, exp.rerun_stale)
    if previous:
        return previous
    claim = Lock(results.claim_path(exp.results_dir, rid), exp.claim_stale_s)
    if not claim.acquire():
        log.warning("run %s is being run now by %s; not running it twice", rid, claim.holder())
        return None
    try:
        claim.start_heartbeat()
        return results.reusable(exp.results_dir, rid, exp.force, exp.rerun_stale) or _run_claimed(exp, rid, method, specs, logger)
    finally:
        claim.release()


def _run_claimed(exp: Experiment, rid: str, method, specs, logger) -> dict[str, Any]:
    record = {"schema_version": results.SCHEMA_VERSION, "run_id": rid, "latency": None, "config": exp.config,
              "started_at": results.now(), "env": results.environment(),
              "job": cluster.job_info(), "attempt": results.attempts(exp.results_dir, rid) + 1}
    log.info("run %s started: attempt %d, job %s", rid, record["attempt"], record["job"])
    watch = Stopwatch()
    with cluster.signals_recorded() as seen:
        try:
            record.update(execute(exp, method, specs, watch))
            record["env"]["model_revision"] = record.pop("model_revision")
            record["status"], record["error"] = "ok", None
        except Exception as err:
            after = f" (after {seen[-1]})" if seen else ""
            record.update(status="failed", error=f"{type(err).__name__}: {err}{after}", metrics={}, stats={}, tasks={})
            raise
        except BaseException as err:  # Ctrl-C, SIGTERM, submitit's exit after a requeue
            record.update(status="interrupted", error=cluster.interruption(err, seen), metrics={}, stats={}, tasks={})
            raise
        finally:
            record["timings"] = watch.timings
            record["finished_at"] = results.now()
            path = results.write(exp.results_dir, record, force=exp.force)
            log.info("run %s %s: %s", rid, record["status"], path)
            loggers.log_run(logger, record, path)
    return record


def calibration_windows(exp: Experiment, method, tokenizer) -> tuple[Any, dict[str, Any]]:
    """(token windows, their coverage statistics) for a calibrated method; (None, {}) for the others."""
    if not method.needs_calibration:
        return None, {}
    calib = exp.config["calib"]
    return data.sample_windows(tokenizer, **calib, data_path=exp.config["data_paths"].get(calib["dataset"]))


def execute(exp: Experiment, method, specs, watch: Stopwatch) -> dict[str, Any]:
    model_cfg = exp.config["model"]
    torch.manual_seed(exp.config["seed"])
    with watch.time("prepare_s"):
        tokenizer = models.load_tokenizer(model_cfg)
        tasks = [build_task(name, spec) for name, spec in specs.items()]
        for task in tasks:
            task.prepare(tokenizer)
        calibration, calib_stats = calibration_windows(exp, method, tokenizer)
    progress.route_library_bars()  # after the tokenizer and tasks are prepared: they import what draws bars
    # A calibrated method keeps the model in CPU memory and moves one block at a time to the device.
    with watch.time("load_s"):
        home = "cpu" if method.needs_calibration else exp.device
        model = models.load_model(model_cfg, home, exp.dtype, exp.config["seed"])
    with watch.time("compress_s"):
        stats = compress.compress(model, method, exp.compression, calibration, exp.device) | calib_stats
        model.to(exp.device)
    log.info("compressed %d layers: sparsity %.4f, %.3f bits/weight", stats["compressed_layers"], stats["sparsity"], stats["bits_per_weight"])
    metrics, task_info = {}, {}
    for task in tasks:
        with watch.time(f"eval_{task.name}_s"):
            task_metrics, task_info[task.name] = task.evaluate(model)
        metrics.update(task_metrics)
        log.info("%s: %s", task.name, task_metrics)
    timed = {}
    if exp.config.get("latency"):
        with watch.time("latency_s"):
            timed["latency"] = latency.measure_run(model, exp.compression, exp.config["method"], exp.config)
    return {"metrics": metrics, "stats": stats, "tasks": task_info, **timed,
            "model_revision": getattr(model.config, "_commit_hash", None)}
