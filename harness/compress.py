"""Compression stage: pick the layers, check their shapes, run the method adapter, measure the result.

Embeddings and the output head stay dense; every other nn.Linear (attention and MLP projections of
each decoder block) is compressed. Storage is counted against a 16-bit checkpoint, whatever dtype the
model runs in.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from harness.config import Compression, ConfigError
from harness.methods import Method
from harness.methods.rtn import RoundToNearest


def compressible_layers(model: nn.Module) -> dict[str, nn.Linear]:
    head = model.get_output_embeddings()
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}


def check_shapes(layers: dict[str, nn.Linear], compression: Compression) -> None:
    """Groups and N:M blocks must tile every layer's input dimension (checked on a meta-device model)."""
    widths = {layer.in_features: name for name, layer in layers.items()}
    quant, pattern = compression.quant, compression.sparsity
    for width, name in widths.items():
        if quant and quant.group_size != -1 and width % quant.group_size:
            common = math.gcd(*widths)
            fits = [g for g in range(8, common + 1) if common % g == 0]
            raise ConfigError(
                f"group_size={quant.group_size} does not divide in_features={width} of {name}; "
                f"group sizes dividing every layer: {', '.join(map(str, fits))} (or -1, per channel)"
            )
        if pattern and pattern.is_nm and width % pattern.m:
            raise ConfigError(f"sparsity_pattern={pattern.name}: M={pattern.m} does not divide in_features={width} of {name}")


@torch.no_grad()
def compress(
    model: nn.Module, method: Method, compression: Compression, calibration: Any = None, device: str | None = None
) -> dict[str, float]:
    layers = compressible_layers(model)
    method_stats = dict(method.compress(model, layers, compression, calibration, device) or {})
    # Kept weights are counted where the mask is chosen: quantization may round more of them to 0.
    # A method that quantizes inside its pruning sweep reports its masks' counts (kept_weights).
    kept = method_stats.pop("kept_weights", None)
    if kept is None:
        count = (lambda w: int(torch.count_nonzero(w))) if compression.sparsity else torch.numel
        kept = {name: count(layer.weight) for name, layer in layers.items()}
    if compression.quant and not method.quantizes:
        # A pruner that cannot quantize is followed by RTN, defined once here: 0 is exactly
        # representable, so the mask survives.
        RoundToNearest().compress(model, layers, compression)
    return storage_stats(model, layers, kept, compression, method.group_param_bits) | method_stats


def layer_bits(layer: nn.Linear, kept: int, compression: Compression, group_param_bits) -> float:
    numel = layer.weight.numel()
    value_bits = kept * compression.bits
    index_bits = 0.0
    pattern = compression.sparsity
    if pattern is not None:
        index_bits = kept * pattern.index_bits_per_kept() if pattern.is_nm else numel  # N:M indices, or a bitmap
    group_bits = 0.0
    if compression.quant:
        fmt = compression.quant
        groups = numel // fmt.group_len(layer.in_features)
        group_bits = groups * group_param_bits(fmt)
    return value_bits + index_bits + group_bits


def storage_stats(
    model: nn.Module, layers: dict[str, nn.Linear], kept: dict[str, int], compression: Compression, group_param_bits
) -> dict[str, float]:
    layer_params = {id(layer.weight) for layer in layers.values()}
    compressed_numel = sum(layer.weight.numel() for layer in layers.values())
    compressed_bits = sum(layer_bits(layer, kept[name], compression, group_param_bits) for name, layer in layers.items())
    other_numel = sum(p.numel() for p in model.parameters() if id(p) not in layer_params)  # shared params once
    zeros = compressed_numel - sum(kept.values())
    return {
        "compressed_layers": len(layers),
        "compressed_params": compressed_numel,
        "sparsity": zeros / compressed_numel,
        "bits_per_weight": compressed_bits / compressed_numel,
        "compressed_bytes": int(math.ceil((compressed_bits + 16 * other_numel) / 8)),
        "dense_bytes": 2 * (compressed_numel + other_numel),
    }
