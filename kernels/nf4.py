"""NF4 / FP4 4-bit weights through bitsandbytes' own kernels (QLoRA's format).

Packing format (bitsandbytes'): two 4-bit codes per byte, in the weight's row-major order, indexing
the 16-value NF4 (or FP4) table; a float32 absmax per block of `group_size` consecutive weights. The
compressed model's weights were dequantized from exactly this format (method=bnb), so quantizing them
again with the same block size returns the same codes and absmax."""
from __future__ import annotations

import torch
from torch import nn

NAME = "bitsandbytes-4bit"


def kernel_version() -> str:
    import bitsandbytes

    return bitsandbytes.__version__


class FourBitLinear(nn.Module):
    def __init__(self, linear: nn.Linear, block_size: int, quant_type: str):
        super().__init__()
        import bitsandbytes.functional as bnb

        self.in_features, self.out_features = linear.in_features, linear.out_features
        codes, self.state = bnb.quantize_4bit(linear.weight.detach(), blocksize=block_size, quant_type=quant_type)
        self.register_buffer("codes", codes)
        self.bias = linear.bias

    def dequantized(self) -> torch.Tensor:
        import bitsandbytes.functional as bnb

        return bnb.dequantize_4bit(self.codes, self.state).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes as bnb

        return bnb.matmul_4bit(x, self.codes.t(), quant_state=self.state, bias=self.bias)


def convert(linear: nn.Linear, compression, method_options: dict) -> tuple[nn.Module, float]:
    layer = FourBitLinear(linear, compression.quant.group_size, method_options.get("quant_type", "nf4"))
    weight = linear.weight.detach().float()
    return layer, ((layer.dequantized() - weight).norm() / weight.norm()).item()
