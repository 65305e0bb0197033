"""Group-wise uniform quantization, shared by every quantizing method.

Conventions follow GPTQ's reference quantizer, so that methods built on it (RTN, GPTQ, AWQ) agree:
  * asymmetric: the range [min(w, 0), max(w, 0)] is split into 2^bits - 1 steps; the zero point is an
    integer, so 0.0 is always exactly representable (pruned weights stay pruned after quantization);
  * symmetric: the range is [-max|w|, max|w|] and the zero point is fixed at (2^bits) / 2;
  * groups are `group_size` consecutive input columns of one output row (-1: the whole row).
Weights are fake-quantized (quantized, then dequantized back to the model dtype); the math is done in
float32 whatever the model dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class QuantFormat:
    bits: int
    group_size: int  # -1: one group per output row
    symmetric: bool

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def group_len(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size


class ColumnParams(NamedTuple):
    """Quantization parameters of the columns of one block of GPTQ's sweep, each [columns, rows] (one
    column's row vector contiguous), and the largest code."""

    scale: torch.Tensor
    zero: torch.Tensor
    maxq: int


def quant_params(w: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for each row of `w` (reduced over the last dimension), float32."""
    w = w.float()
    xmin = w.amin(dim=-1, keepdim=True).clamp(max=0)
    xmax = w.amax(dim=-1, keepdim=True).clamp(min=0)
    if fmt.symmetric:
        xmax = torch.maximum(-xmin, xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)  # an all-zero group: any scale works, avoid 0/0
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / fmt.maxq
    if fmt.symmetric:
        zero = torch.full_like(scale, (fmt.maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def quantize_dequantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    q = torch.clamp(torch.round(w.float() / scale) + zero, 0, maxq)
    return scale * (q - zero)


def grouped(weight: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """View [out, in] as [out, n_groups, group_len]; the caller has checked that groups divide `in`."""
    rows, cols = weight.shape
    g = fmt.group_len(cols)
    return weight.reshape(rows, cols // g, g)


def fake_quantize(weight: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Round-to-nearest of a [out, in] weight, group-wise along the input dimension."""
    w = grouped(weight, fmt).float()
    scale, zero = quant_params(w, fmt)
    return quantize_dequantize(w, scale, zero, fmt.maxq).reshape(weight.shape).to(weight.dtype)
