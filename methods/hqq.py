"""HQQ (Badri & Shaji, 2023), through the `hqq` package: calibration-free half-quadratic quantization.
Per group, the zero point (and scale) are optimized to minimize a sparsity-promoting lp (p < 1) norm
of the weight error; no data is needed. HQQ is asymmetric and keeps a float16 scale and a float16 zero
per group.

`axis` is the package's grouping: 0 (its default) reshapes the weight to [group_size, -1] and groups
each column, i.e. elements strided through the flattened weight; 1 groups `group_size` consecutive
input columns of a row, the layout of GPTQ/RTN groups and of fused low-bit kernels. On SmolLM2 at
w3g64 the choice matters more than HQQ vs RTN (benchmarks/NOTES.md)."""
import torch

from harness.config import ConfigError
from harness.methods import Method


class HalfQuadratic(Method):
    name = "hqq"
    quantizes = True
    bits_range = (2, 8)

    def __init__(self, optimize: bool = True, axis: int = 0) -> None:
        super().__init__(optimize=optimize, axis=axis)
        self.optimize = bool(optimize)
        if axis not in (0, 1):
            raise ConfigError(f"method.axis={axis}: hqq groups along axis 0 or 1")
        self.axis = int(axis)

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
        axis = 1 if fmt.group_size == -1 else self.axis  # per channel: one group per output row
        for layer in layers.values():
            weight = layer.weight
            codes, meta = Quantizer.quantize(
                weight.float(), nbits=fmt.bits, group_size=fmt.group_len(layer.in_features), optimize=self.optimize,
                axis=axis, device=str(weight.device), compute_dtype=torch.float32, bitpack=False,
            )
            weight.copy_(Quantizer.dequantize(codes, meta).reshape(weight.shape))


METHOD_CLASS = HalfQuadratic
