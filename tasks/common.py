"""What the knowledge tasks share: settings resolved against the top-level config, seeded sampling,
and where offline data came from. Not a task kind itself (no conf/task/*.yaml names it)."""
from __future__ import annotations

import importlib.metadata
import math
import random
from typing import Any, Sequence, TypeVar

from harness.config import ConfigError

T = TypeVar("T")


def resolve_settings(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A top-level `max_samples` (if set) overrides the task's own cap, `eval_batch_size` its batch size
    (a GPU takes far larger batches than the CPU-sized defaults); `data_paths.<dataset>` points at a
    local copy of a hub dataset. The task's own `seed` draws its sample, so that runs of different
    methods (or experiment seeds) are scored on the same questions."""
    key = spec.get("data_path_key", spec["dataset"])  # two tasks may read different files of one dataset
    return spec | sample_and_batch(spec, config) | {"data_path": (config.get("data_paths") or {}).get(key)}


def sample_and_batch(spec: dict[str, Any], config: dict[str, Any], default_batch: int | None = None) -> dict[str, Any]:
    """max_samples and batch_size: the top-level config's where set, else the task's own."""
    cap, batch_size = config.get("max_samples"), config.get("eval_batch_size")
    return {
        "max_samples": cap if cap is not None else spec.get("max_samples"),
        "batch_size": batch_size if batch_size is not None else spec.get("batch_size", default_batch),
    }


class SampledTask:
    """A knowledge task over a seeded sample of items: settings from `resolve_settings`."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.spec = spec

    @staticmethod
    def resolve(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        return resolve_settings(spec, config)


class JudgedTask(SampledTask):
    @staticmethod
    def resolve(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """The top-level `judge` settings, if any, override the task's. A secret among them is refused
        here, before anything is recorded."""
        from harness.judge import check_settings

        judge = spec["judge"] | (config.get("judge") or {})
        try:
            check_settings(judge)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return resolve_settings(spec, config) | {"judge": judge}


def take_sample(items: Sequence[T], max_samples: int | None, seed: int) -> list[T]:
    """All items, or a seeded random subset of `max_samples` of them in a stable order."""
    if max_samples is None or max_samples >= len(items):
        return list(items)
    return random.Random(seed).sample(list(items), max_samples)


def package_source(distribution: str, license_name: str) -> str:
    """'<distribution> <version> (<license>)': recorded with every score computed from package data."""
    return f"{distribution} {importlib.metadata.version(distribution)} ({license_name})"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def mean_and_stderr(name: str, values: Sequence[float], *, binary: bool) -> dict[str, float]:
    """{name: mean, name_stderr: its standard error} over per-sample scores: binomial sqrt(p(1-p)/n)
    for 0/1 scores (accuracy, exact match), sample standard deviation / sqrt(n) for graded ones
    (F1, ratings). Nothing for no samples."""
    n = len(values)
    if not n:
        return {}
    p = mean(values)
    if binary:
        stderr = math.sqrt(p * (1 - p) / n)
    else:
        stderr = math.sqrt(sum((v - p) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return {name: p, f"{name}_stderr": stderr}
