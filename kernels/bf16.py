"""The dense baseline: the layer's own bfloat16 weight through torch's matmul (cuBLAS on CUDA).

Packing format: none, the [out, in] weight as the model holds it (2 bytes a weight)."""
from __future__ import annotations

import torch
from torch import nn

NAME = "bf16-cublas"
KERNEL_VERSION = "torch-fused"  # q, k, v and gate, up stacked into one layer each (kernels.fuse_siblings)


def convert(linear: nn.Linear, compression, method_options: dict) -> tuple[nn.Module, float]:
    return linear, 0.0


def concatenate(linears: list[nn.Linear]) -> nn.Linear:
    """One layer (no bias) computing `linears` side by side: their weights stacked."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused
