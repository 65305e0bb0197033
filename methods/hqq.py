"""HQQ (Badri & Shaji, 2023), through the `hqq` package: calibration-free half-quadratic quantization.
Per group, the zero point (and scale) are optimized to minimize a sparsity-promoting lp (p < 1) norm
of the weight error; no data is needed. HQQ is asymmetric and keeps a float16 scale and a float16 zero
per group."""
import torch

from harness.config import ConfigError
from harness.methods import Method


class HalfQuadratic(Method):
    name = "hqq"
    quantizes = True
    bits_range = (2, 8)

    def __init__(self, optimize: bool = True) -> None:
        super().__init__(optimize=optimize)
        self.optimize = bool(optimize)

    def check(self, compression) -> None:
        super().check(compression)
        if compression.quant.symmetric:
            raise ConfigError("method=hqq is asymmetric (an optimized zero point per group): set symmetric=false")

    def group_param_bits(self, fmt) -> int:
        return 32  # float16 scale + float16 zero

    @torch.no_grad()
    def compress(self, model, layers, compression, calibration=None, device=None) -> None:
        from hqq.core.quantize import Quantizer

        fmt = compression.quant
        for layer in layers.values():
            weight = layer.weight
            codes, meta = Quantizer.quantize(
                weight.float(), nbits=fmt.bits, group_size=fmt.group_len(layer.in_features), optimize=self.optimize,
                axis=1, device=str(weight.device), compute_dtype=torch.float32, bitpack=False,
            )
            weight.copy_(Quantizer.dequantize(codes, meta).reshape(weight.shape))


METHOD_CLASS = HalfQuadratic
