"""The experiment a config describes, validated before anything expensive happens.

`Experiment.from_config` turns the composed Hydra config into plain values, resolves `auto` device and
dtype, normalizes keys that cannot matter (group size without quantization), and raises `ConfigError`
with a one-line message naming the bad value. The normalized form is what gets recorded and hashed
into the run id, so two spellings of one experiment share one record.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from harness.numerics.quant import QuantFormat
from harness.numerics.sparsity import SparsityPattern, parse_pattern

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Keys that say where, whether and how to run, not what the experiment is: not recorded, not in the run id.
NOT_EXPERIMENT = ("results_dir", "force", "rerun_stale", "retry_failed", "dry_run", "claim_stale_s", "cache_dir")
# Every numeric key: (name, smallest value, may be null). Checked before anything loads.
INTEGER_KEYS = (
    ("seqlen", 1, False), ("max_eval_tokens", 1, True), ("max_samples", 1, True), ("eval_batch_size", 1, True),
    ("seed", 0, False), ("calib.n_samples", 1, False), ("calib.seqlen", 1, False), ("calib.seed", 0, False),
)


class ConfigError(ValueError):
    """Bad input, reported as one line before any model is loaded."""


@dataclass(frozen=True)
class Compression:
    """What a method is asked to do to every compressed linear layer."""

    quant: QuantFormat | None  # None: weights stay in the model dtype
    sparsity: SparsityPattern | None  # None: dense

    @property
    def bits(self) -> int:
        return self.quant.bits if self.quant else 16


@dataclass(frozen=True)
class Experiment:
    config: dict[str, Any]  # normalized, recorded, hashed into the run id
    compression: Compression
    device: str
    dtype: torch.dtype
    results_dir: str
    force: bool
    rerun_stale: bool  # an ok record made by other code is not reused
    claim_stale_s: float  # a claim whose heartbeat is older is taken over (claims.py)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Experiment":
        raw = OmegaConf.to_container(cfg, resolve=True)
        raw.pop("hydra", None)
        config = {k: v for k, v in raw.items() if k not in NOT_EXPERIMENT}
        _check_integers(config)
        claim_stale_s = raw.get("claim_stale_s", 600)
        if isinstance(claim_stale_s, bool) or not isinstance(claim_stale_s, (int, float)) or claim_stale_s <= 0:
            raise ConfigError(f"claim_stale_s={claim_stale_s!r}: must be a positive number of seconds")
        compression = _compression(config)
        config["device"] = _device(config.get("device", "auto"))
        config["dtype"] = _dtype_name(config.get("dtype", "auto"), config["device"])
        _check_tasks(config.get("tasks"))
        return cls(
            config=config,
            compression=compression,
            device=config["device"],
            dtype=DTYPES[config["dtype"]],
            results_dir=str(raw.get("results_dir", "results")),
            force=bool(raw.get("force", False)),
            rerun_stale=bool(raw.get("rerun_stale", False)),
            claim_stale_s=float(claim_stale_s),
        )


def _check_integers(config: dict[str, Any]) -> None:
    for name, lowest, nullable in INTEGER_KEYS:
        section, _, key = name.rpartition(".")
        holder = config.get(section) if section else config
        if not isinstance(holder, dict) or key not in holder:
            continue
        value = holder[key]
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            hint = ", or null" if nullable else ""
            raise ConfigError(f"{name}={value!r}: must be an integer >= {lowest}{hint}")


def _compression(config: dict[str, Any]) -> Compression:
    bits = config.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise ConfigError(f"bits={bits!r}: must be an integer from 2 to 16 (16 = no quantization)")
    quant = None
    if bits < 16:
        group_size = config.get("group_size")
        if not isinstance(group_size, int) or not (group_size == -1 or group_size >= 1):
            raise ConfigError(f"group_size={group_size!r}: must be a positive integer or -1 (per channel)")
        quant = QuantFormat(bits=bits, group_size=group_size, symmetric=bool(config.get("symmetric", False)))
    else:
        config["group_size"] = None  # nothing is grouped without quantization
        config["symmetric"] = None

    sparsity = config.get("sparsity", 0.0)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity={sparsity!r}: must be a number in [0, 1)")
    try:
        nm = parse_pattern(str(config.get("sparsity_pattern", "unstructured")))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    pattern = None
    if nm is not None:
        n, m = nm
        implied = 1 - n / m
        if sparsity not in (0, implied) and abs(sparsity - implied) > 1e-9:
            raise ConfigError(
                f"sparsity={sparsity} contradicts sparsity_pattern={n}:{m}, which keeps {n} of {m} "
                f"(sparsity {implied:g}); leave sparsity out"
            )
        pattern = SparsityPattern(sparsity=implied, n=n, m=m)
    elif sparsity > 0:
        pattern = SparsityPattern(sparsity=float(sparsity))
    config["sparsity"] = pattern.sparsity if pattern else 0.0
    config["sparsity_pattern"] = pattern.name if pattern else "unstructured"
    return Compression(quant=quant, sparsity=pattern)


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device}: no CUDA GPU is visible on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"device={device!r}: expected auto, cpu, cuda or cuda:N")
    return device


def _dtype_name(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected auto or one of {', '.join(DTYPES)}")
    return dtype


def _check_tasks(tasks: Any) -> None:
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ConfigError(f"tasks={tasks!r}: expected a list of task names, e.g. tasks=[pydoc]")
