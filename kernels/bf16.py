"""The dense baseline: the layer's own bfloat16 weight through torch's matmul (cuBLAS on CUDA).

Packing format: none, the [out, in] weight as the model holds it (2 bytes a weight)."""
from __future__ import annotations

from torch import nn

NAME = "bf16-cublas"
KERNEL_VERSION = "torch"


def convert(linear: nn.Linear, compression, method_options: dict) -> tuple[nn.Module, float]:
    return linear, 0.0
