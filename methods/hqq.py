"""HQQ (Badri & Shaji, 2023), through the `hqq` package: calibration-free half-quadratic quantization.
Per group, the zero point is optimized (the scale stays min-max) to minimize a sparsity-promoting lp
(p = 0.7) norm of the weight error; no data is needed.

The layer is quantized exactly as the package's own `HQQLinear` with `BaseQuantizeConfig(nbits,
group_size, axis)` does it, and dequantized with it: the package's optimizer settings (its default
`optimize_weights_proximal`: lp_norm 0.7, beta 10, kappa 1.01, at most 20 iterations with early
stop), the zero rounded to an integer at 4 bits only (BaseQuantizeConfig's round_zero), and a
float16 scale and float16 zero per group (compute_dtype float16), the 32 bits per group counted in
bits/weight.

`axis` is the package's grouping: 1 (BaseQuantizeConfig's default, the layout its fast kernels
need) groups `group_size` consecutive input columns of a row, as GPTQ/RTN groups; 0 reshapes the
weight to [group_size, -1] and groups each column of that, i.e. elements strided through the
flattened weight. The adapter defaults to 0, which the package's README recommends for quality
"especially at lower bits" (Quantizer.quantize's own default); on SmolLM2 at w3g64 it is much
better than 1 (benchmarks/NOTES.md)."""
import torch

from harness.config import ConfigError
from harness.methods import Method

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)  # hqq's Quantizer.SUPPORTED_BITS within this harness's 2..8


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
        fmt = compression.quant
        if fmt.symmetric:
            raise ConfigError("method=hqq is asymmetric (an optimized zero point per group): set symmetric=false")
        if fmt.bits not in SUPPORTED_BITS:
            raise ConfigError(f"bits={fmt.bits}: method=hqq supports {', '.join(map(str, SUPPORTED_BITS))}")
        if fmt.group_size != -1 and fmt.group_size % 8:
            raise ConfigError(f"group_size={fmt.group_size}: method=hqq needs a multiple of 8 (BaseQuantizeConfig) or -1")

    def group_param_bits(self, fmt) -> int:
        return 32  # float16 scale + float16 zero

    @torch.no_grad()
    def compress(self, model, layers, compression, calibration=None, device=None) -> None:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        fmt = compression.quant
        per_row = fmt.group_size == -1  # one group per output row: no grouping, along the input dim
        config = BaseQuantizeConfig(nbits=fmt.bits, group_size=None if per_row else fmt.group_size, axis=1 if per_row else self.axis)
        config["weight_quant_params"]["optimize"] = self.optimize
        for layer in layers.values():
            weight = layer.weight
            source = torch.nn.Linear(layer.in_features, layer.out_features, bias=False, device=weight.device, dtype=torch.float32)
            source.weight.copy_(weight)
            quantized = HQQLinear(source, config, compute_dtype=torch.float16, device=str(weight.device), del_orig=False)
            weight.copy_(quantized.dequantize().reshape(weight.shape))


METHOD_CLASS = HalfQuadratic
