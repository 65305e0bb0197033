"""SparseGPT (Frantar & Alistarh, 2023): prune with GPTQ's column sweep, choosing the mask from the OBS
saliency w^2 / [H^-1]_jj^2 (per block of columns for unstructured sparsity, per M columns for N:M)
and spreading each pruned weight's error over the later columns. When bits < 16 it quantizes jointly,
as in the paper: each column is quantized right after it is pruned, inside the same sweep.
"""
from __future__ import annotations

import torch

from harness.numerics.calibration import LayerwiseMethod
from harness.config import ConfigError
from harness.methods.gptq import column_quantizer, dead_inputs, inverse_hessian_upper, obs_sweep
from harness.numerics.quant import QuantFormat
from harness.numerics.sparsity import SparsityPattern


def sparsegpt_prune(
    weight: torch.Tensor,
    hinv: torch.Tensor,
    dead: torch.Tensor,
    pattern: SparsityPattern,
    fmt: QuantFormat | None = None,
    block_size: int = 128,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """SparseGPT of a [rows, cols] weight given the upper Cholesky factor of its damped inverse
    Hessian (gptq.inverse_hessian_upper) and its dead inputs; returns the float32 result and the
    number of weights its mask kept. `use_triton` as in gptq.obs_sweep."""
    w = weight.float().clone()
    quantizer = column_quantizer(fmt, w, dead) if fmt is not None else None
    w[:, dead] = 0
    return obs_sweep(w, hinv, block_size, quantizer, pattern, use_triton)


class SparseGPT(LayerwiseMethod):
    name = "sparsegpt"
    prunes = True
    quantizes = True  # jointly, when bits < 16
    patterns = ("unstructured", "N:M")
    stats = ("hessian",)

    def __init__(self, damp: float = 0.01, block_size: int = 128, true_sequential: bool = False) -> None:
        if not damp > 0 or block_size < 1:
            raise ConfigError(f"method=sparsegpt: damp={damp} must be > 0 and block_size={block_size} >= 1")
        super().__init__(true_sequential, damp=damp, block_size=block_size)
        self.damp, self.block_size = float(damp), int(block_size)

    def compress(self, model, layers, compression, calibration=None, device=None) -> dict:
        # Jointly quantized, a kept weight may round to 0: the masks' counts are the sparsity.
        self.kept_weights = {}
        return super().compress(model, layers, compression, calibration, device) | {"kept_weights": self.kept_weights}

    @torch.no_grad()
    def compress_group(self, layers, inputs, compression) -> None:
        # One inverse per group; each layer is pruned on its own, since an unstructured mask is
        # chosen over the rows of one layer.
        hinv = inverse_hessian_upper(inputs.hessian, self.damp)
        dead = dead_inputs(inputs.hessian)
        for name, layer in layers.items():
            pruned, self.kept_weights[name] = sparsegpt_prune(
                layer.weight, hinv, dead, compression.sparsity, compression.quant, self.block_size
            )
            layer.weight.copy_(pruned)


METHOD_CLASS = SparseGPT
