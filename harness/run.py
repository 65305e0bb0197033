"""The pipeline of one experiment: config -> model -> compress -> evaluate -> record.

Everything that can be checked without weights is checked first (config values, method x compression,
task names, layer shapes on a meta-device model); a failure there is a one-line error and no record.
From the first expensive step on, any failure is recorded as a failed run and re-raised.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any

import torch

from harness import compress, data, models, results
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
    exp = Experiment.from_config(cfg)
    method_cfg = dict(exp.config["method"])
    method = load_method(method_cfg.pop("name"), method_cfg)
    method.check(exp.compression)
    if method.needs_calibration:
        check_calibration(exp.config["calib"])
    else:
        exp.config["calib"] = None  # not part of what this experiment is
    exp.config["task_specs"] = resolve_specs(exp.config["tasks"], exp.config)
    compress.check_shapes(compress.compressible_layers(models.skeleton(exp.config["model"])), exp.compression)
    return exp, method, exp.config["task_specs"]


def check_calibration(calib: dict[str, Any]) -> None:
    if calib["dataset"] not in data.CORPORA:
        raise ConfigError(f"calib.dataset={calib['dataset']}: unknown; known: {', '.join(data.CORPORA)}")
    for key in ("n_samples", "seqlen"):
        if not isinstance(calib[key], int) or calib[key] < 1:
            raise ConfigError(f"calib.{key}={calib[key]}: must be a positive integer")


def run(cfg) -> dict[str, Any]:
    exp, method, specs = plan(cfg)
    rid = results.run_id(exp.config)
    previous = results.read(exp.results_dir, rid)
    if previous and previous.get("status") == "ok" and not exp.force:
        log.info("run %s already finished ok (%s); skipping (force=true to run again)", rid, results.record_path(exp.results_dir, rid))
        return previous

    record = {"run_id": rid, "config": exp.config, "started_at": results.now(), "env": results.environment()}
    watch = Stopwatch()
    try:
        record.update(execute(exp, method, specs, watch))
        record["status"], record["error"] = "ok", None
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}", metrics={}, stats={}, tasks={})
        raise
    finally:
        record["timings"] = watch.timings
        record["finished_at"] = results.now()
        path = results.write(exp.results_dir, record)
        log.info("run %s %s: %s", rid, record["status"], path)
    return record


def execute(exp: Experiment, method, specs, watch: Stopwatch) -> dict[str, Any]:
    model_cfg = exp.config["model"]
    torch.manual_seed(exp.config["seed"])
    with watch.time("prepare_s"):
        tokenizer = models.load_tokenizer(model_cfg)
        tasks = [build_task(name, spec) for name, spec in specs.items()]
        for task in tasks:
            task.prepare(tokenizer)
        calibration, calib_stats = None, {}
        if method.needs_calibration:
            calib = exp.config["calib"]
            data_path = exp.config["data_paths"].get(calib["dataset"])
            calibration, calib_stats = data.sample_windows(tokenizer, **calib, data_path=data_path)
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
    return {"metrics": metrics, "stats": stats, "tasks": task_info}
