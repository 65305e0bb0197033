"""HQQ (Badri & Shaji, 2023), through the `hqq` package: calibration-free half-quadratic quantization.
Per group, the scale stays min-max and the zero point is optimized for a sparsity-promoting lp (p = 0.7)
norm of the weight error; no data is needed. The optimizer alternates a shrinkage of the error (an error
below beta^(-1/(2-p)) in weight units, 0.17 at the start, becomes 0) and a zero update that fits the
codes to the weight minus the shrunk error. Where errors are smaller than that threshold, as for
99.96% of SmolLM2's weights at w3g64, the update is the least-squares zero for the current codes (it
makes each group's mean error 0), and lp_norm changes nothing (benchmarks/NOTES.md, 2026-12-01).

The layer is quantized exactly as the package's own `HQQLinear` with `BaseQuantizeConfig(nbits,
group_size, axis)` does it, and dequantized with it: the package's optimizer settings (its default
`optimize_weights_proximal`: lp_norm 0.7, beta 10, kappa 1.01, at most 20 iterations, stopping when the
mean absolute error of the whole layer stops falling), the zero rounded to an integer at 4 bits only,
and only before the optimizer moves it (BaseQuantizeConfig's round_zero), and a float16 scale and float16
zero per group (compute_dtype float16), the 32 bits per group counted in bits/weight. The optimizer's
settings and round_zero can be changed (method.lp_norm, beta, kappa, iters, round_zero; unset: the
package's), through the package's own hook for it (Quantizer.optimize_weights).

At 3 bits BaseQuantizeConfig leaves the zero a float from the start, so 0.0 is in general no level of
a group (RTN's integer zero keeps it one): a small weight's error is up to half a step whatever its
size. On SmolLM2 at w3g64 this is most of HQQ's gap to RTN with axis=1 (CPU, 8,192 pydoc tokens: 90.3 against RTN's
37.2; +method.round_zero=true 38.6), not the optimizer (benchmarks/NOTES.md, 2026-12-01).

`axis` is the package's grouping: 1 (BaseQuantizeConfig's default, the layout its fast kernels need)
groups `group_size` consecutive input columns of a row, as GPTQ/RTN group; 0 (Quantizer.quantize's
default) reshapes the weight to [group_size, -1] and groups each column of that: for an [out, in] weight
with group_size dividing out, group_size weights of one input column, out/group_size rows apart. The
adapter defaults to 0, which the package's README recommends for quality ("In general axis=0 gives
better results than axis=1, especially at lower bits"); on SmolLM2 at w3g64 it is much better than 1
(benchmarks/NOTES.md)."""
import inspect
from contextlib import contextmanager
from functools import partial

import torch

from harness.config import ConfigError
from harness.methods import Method

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)  # hqq's Quantizer.SUPPORTED_BITS within this harness's 2..8


class HalfQuadratic(Method):
    name = "hqq"
    quantizes = True
    bits_range = (2, 8)

    def __init__(
        self,
        optimize: bool = True,
        axis: int = 0,
        lp_norm: float | None = None,
        beta: float | None = None,
        kappa: float | None = None,
        iters: int | None = None,
        round_zero: bool | None = None,
    ) -> None:
        super().__init__(optimize=optimize, axis=axis, lp_norm=lp_norm, beta=beta, kappa=kappa, iters=iters, round_zero=round_zero)
        self.optimize = bool(optimize)
        if axis not in (0, 1):
            raise ConfigError(f"method.axis={axis}: hqq groups along axis 0 or 1")
        self.axis = int(axis)
        self.optimizer_overrides = optimizer_overrides(lp_norm=lp_norm, beta=beta, kappa=kappa, iters=iters)
        self.round_zero = round_zero

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
        if self.round_zero is not None:
            config["weight_quant_params"]["round_zero"] = self.round_zero
        with optimizer_settings(self.optimizer_overrides):
            for layer in layers.values():
                weight = layer.weight
                source = torch.nn.Linear(layer.in_features, layer.out_features, bias=False, device=weight.device, dtype=torch.float32)
                source.weight.copy_(weight)
                quantized = HQQLinear(source, config, compute_dtype=torch.float16, device=str(weight.device), del_orig=False)
                weight.copy_(quantized.dequantize().reshape(weight.shape))


def optimizer_overrides(**settings) -> dict:
    """The optimizer settings given (not None), checked against what the package's optimizer accepts."""
    given = {k: v for k, v in settings.items() if v is not None}
    if given.get("lp_norm", 1) <= 0:
        raise ConfigError(f"method.lp_norm={given['lp_norm']}: the lp norm needs p > 0")
    if given.get("beta", 1) <= 0:
        raise ConfigError(f"method.beta={given['beta']}: the penalty weight beta must be > 0")
    if given.get("kappa", 1) < 1:
        raise ConfigError(f"method.kappa={given['kappa']}: beta's growth factor kappa must be >= 1")
    if given.get("iters", 1) < 1:
        # The package's optimizer with 0 iterations fails (NameError); 0 iterations is optimize=false.
        raise ConfigError(f"method.iters={given['iters']}: at least 1 (method.optimize=false skips the optimizer)")
    return given


@contextmanager
def optimizer_settings(overrides: dict):
    """The package's default optimizer (Quantizer.optimize_weights) with some of its opt_params
    replaced, for the duration; the package's own defaults for the rest."""
    from hqq.core.quantize import Quantizer

    if not overrides:
        yield
        return
    default = Quantizer.optimize_weights
    defaults = inspect.signature(default).parameters["opt_params"].default
    Quantizer.optimize_weights = partial(default, opt_params=defaults | overrides)
    try:
        yield
    finally:
        Quantizer.optimize_weights = default


METHOD_CLASS = HalfQuadratic
