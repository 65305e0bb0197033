"""Method adapters: one file per method, chosen by `method=<name>` (conf/method/<name>.yaml).

Every method takes the model, the linear layers to compress, the `Compression` asked for and (if it
needs them) calibration token ids, and changes those layers' weights in place. It declares what it can do, so the pipeline rejects a
combination it can't do before the model loads, and composes the rest: a method that only prunes is
followed by round-to-nearest when `bits` < 16.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch

from harness.config import Compression, ConfigError
from harness.numerics.quant import QuantFormat


class Method:
    name: str = ""
    prunes: bool = False  # chooses a sparsity mask
    quantizes: bool = False  # chooses quantized values (a pruner that also does: jointly, if bits < 16)
    bits_range: tuple[int, int] = (2, 8)  # when it quantizes
    patterns: tuple[str, ...] = ()  # "unstructured", "N:M": what it can prune to
    needs_calibration: bool = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    def group_param_bits(self, fmt: QuantFormat) -> int:
        """Storage of one quantization group's parameters: a float16 scale, plus a `bits`-bit integer
        zero point when asymmetric (GPTQ's packed format). Methods storing other formats override it."""
        return 16 + (0 if fmt.symmetric else fmt.bits)

    def check(self, compression: Compression) -> None:
        """Raise ConfigError if this method cannot produce `compression`."""
        if compression.sparsity and not self.prunes:
            raise ConfigError(f"method={self.name} does not prune: sparsity must be 0 (try method=magnitude)")
        if self.prunes and not compression.sparsity:
            raise ConfigError(f"method={self.name} prunes: give sparsity > 0 or sparsity_pattern=N:M")
        if compression.sparsity:
            kind = "N:M" if compression.sparsity.is_nm else "unstructured"
            if kind not in self.patterns:
                raise ConfigError(f"method={self.name} cannot prune to sparsity_pattern={compression.sparsity.name}")
        if self.quantizes and not self.prunes and compression.quant is None:
            lo, hi = self.bits_range
            raise ConfigError(f"method={self.name} quantizes: bits must be {lo}..{hi}, not 16 (try method=none)")
        if compression.quant is not None:
            lo, hi = self.bits_range
            if not (self.quantizes or self.prunes):
                raise ConfigError(f"method={self.name} leaves weights as they are: bits must be 16")
            if not lo <= compression.quant.bits <= hi:
                raise ConfigError(f"bits={compression.quant.bits}: method={self.name} supports {lo}..{hi}")

    def compress(
        self,
        model: torch.nn.Module,
        layers: dict[str, torch.nn.Linear],
        compression: Compression,
        calibration: torch.Tensor | None = None,
        device: str | None = None,
    ) -> dict[str, float] | None:
        """Change `layers` (every nn.Linear of `model` but the output head) in place. `calibration` is
        a [n_samples, seqlen] tensor of token ids when `needs_calibration`, else None; such a method
        computes on `device` one decoder block at a time while the model stays where it is. What it
        returns (timings, peak memory) joins the run's stats."""
        raise NotImplementedError


def load_method(name: str, options: dict[str, Any]) -> Method:
    """The adapter in methods/<name>.py, built with the options from conf/method/<name>.yaml."""
    try:
        module = importlib.import_module(f"harness.methods.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"harness.methods.{name}":
            raise
        raise ConfigError(f"method={name}: no such method adapter (methods/{name}.py)") from None
    try:
        return module.METHOD_CLASS(**options)
    except TypeError as err:  # an option the method does not take
        raise ConfigError(f"method={name}: {err}") from None
