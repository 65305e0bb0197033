"""`python -m harness.sweep prefetch <grid overrides>`: fetch what a grid needs into the shared cache.

Run on a login node with internet before submitting, so that compute nodes without internet find
everything in `cache_dir` (HF_HOME). For every distinct model of the grid: a hub id is downloaded
(config, tokenizer, weights); a local folder, an installed package or a random model needs nothing.
For every distinct task and calibration set: the task's own `prepare` runs, which reads its data
the way a job will (from the hub into the datasets cache, or from a package / local copy).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

from harness import cluster

WEIGHT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]


def prefetch(overrides: list[str]) -> int:
    from harness.sweep import compose_grid

    points, compose = compose_grid(overrides)
    configs = [compose(point) for point in points]
    cluster.use_cache_dir(configs[0].get("cache_dir"))
    from harness.config import ConfigError
    from harness.run import resolve

    planned = []
    for point, cfg in zip(points, configs):
        try:
            planned.append(resolve(cfg)[0].config)
        except ConfigError as err:
            print(f"skipped (invalid): {' '.join(point)}: {err}", file=sys.stderr)
    failures = 0
    for label, fetch in _items(planned):
        try:
            print(f"{label}: {fetch()}")
        except Exception as err:  # one unreachable item must not hide the others
            failures += 1
            print(f"{label}: cannot download: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
    cache = os.environ.get("HF_HOME", "the default Hugging Face cache (~/.cache/huggingface)")
    print(f"prefetch: {len(planned)} valid points; cache {cache}; {failures} items could not be fetched")
    return 1 if failures else 0


def _items(configs: list[dict[str, Any]]) -> list[tuple[str, Callable[[], str]]]:
    """(label, fetch) for every distinct model, then every distinct task and calibration set."""
    items, seen = [], set()
    for config in configs:
        model_cfg = config["model"]
        key = repr(sorted(model_cfg.items()))
        if key not in seen:
            seen.add(key)
            items.append((_model_label(model_cfg), lambda m=model_cfg: _fetch_model(m)))
    for config in configs:
        for name, spec in config["task_specs"].items():
            key = repr((config["model"]["name"], name, sorted(spec.items(), key=str)))
            if key not in seen:
                seen.add(key)
                items.append((f"dataset of task {name}", lambda n=name, s=spec, m=config["model"]: _prepare_task(n, s, m)))
        if config.get("calib"):
            key = repr((config["model"]["name"], sorted(config["calib"].items())))
            if key not in seen:
                seen.add(key)
                items.append((f"calibration set {config['calib']['dataset']}", lambda c=config: _prepare_calibration(c)))
    return items


def _model_label(model_cfg: dict[str, Any]) -> str:
    if model_cfg.get("random") or model_cfg.get("package") or os.path.isdir(str(model_cfg.get("path"))):
        return f"model {model_cfg['name']}"
    return f"model {model_cfg['path']}"


def _fetch_model(model_cfg: dict[str, Any]) -> str:
    from harness import hub

    if model_cfg.get("random"):
        return "nothing to download (built in-process)"
    if model_cfg.get("package"):
        return f"nothing to download (installed package {model_cfg['package']})"
    path = str(model_cfg.get("path"))
    if os.path.isdir(path):
        return f"nothing to download (local folder {path})"
    offline = hub.offline_reason()
    if offline:
        raise ConnectionError(offline)
    from huggingface_hub import snapshot_download

    patterns = [model_cfg["gguf_file"], "*.json", "tokenizer*"] if model_cfg.get("gguf_file") else WEIGHT_FILES
    return f"in the cache at {snapshot_download(path, allow_patterns=patterns)}"


def _tokenizer(model_cfg: dict[str, Any]):
    from harness import hub, models

    if _model_label(model_cfg) != f"model {model_cfg['name']}" and hub.offline_reason():  # a hub model
        raise ConnectionError(f"needs the tokenizer of {model_cfg['path']} from the hub: {hub.offline_reason()}")
    return models.load_tokenizer(model_cfg)


def _prepare_task(name: str, spec: dict[str, Any], model_cfg: dict[str, Any]) -> str:
    from harness.tasks import build

    build(name, spec).prepare(_tokenizer(model_cfg))
    return "ready (read as a job will read it)"


def _prepare_calibration(config: dict[str, Any]) -> str:
    from harness import data

    calib = config["calib"]
    data.calibration_windows(_tokenizer(config["model"]), **calib, data_path=config["data_paths"].get(calib["dataset"]))
    return "ready"
