"""Wanda (Sun et al., 2023): prune the weights with the lowest |W_ij| * ||X_j||_2, comparing weights
within each output row (unstructured) or within each M consecutive inputs (N:M). No weight update.
When bits < 16, harness/compress.py follows it with round-to-nearest.
"""
from __future__ import annotations

import torch

from harness.numerics.calibration import LayerwiseMethod
from harness.numerics.sparsity import SparsityPattern, layer_mask


def wanda_mask(weight: torch.Tensor, sq_norm: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """Keep-mask of a [rows, cols] weight from its inputs' squared column norms ||X_j||^2."""
    score = weight.float().abs() * sq_norm.sqrt()
    return layer_mask(score, pattern, per_row=True)


class Wanda(LayerwiseMethod):
    name = "wanda"
    prunes = True
    patterns = ("unstructured", "N:M")
    stats = ("sq_norm",)

    def __init__(self, true_sequential: bool = False) -> None:
        super().__init__(true_sequential)

    @torch.no_grad()
    def compress_group(self, layers, inputs, compression) -> None:
        for layer in layers.values():
            layer.weight.mul_(wanda_mask(layer.weight, inputs.sq_norm, compression.sparsity))


METHOD_CLASS = Wanda
