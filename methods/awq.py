"""AWQ (Lin et al., 2024): activation-aware weight quantization.

For each group of linears sharing an input (q, k, v; gate, up; o; down), a per-input-channel scale s
is searched over a grid, s = mean|x|^alpha / mean|w|^(1 - alpha) (AutoAWQ's "duo" scaling; with
duo_scaling false, s = mean|x|^alpha as in the original llm-awq), alpha in {0, 1/n, ..., (n-1)/n}.
Then each layer's weight clipping range is searched (max |w| of every group shrunk by up to
`max_shrink`), and the scaled, clipped weight is quantized with RTN (the paper's setting) or GPTQ.

Two simplifications, both exact rewrites rather than approximations of the objective:
  * The scale is folded into the weight, W' = Q(W diag(s)) diag(s)^-1: the fake-quantized equivalent
    of AWQ scaling the weight and dividing the previous operation's output (as several
    re-implementations do for evaluation). The scale is shared by the group, as AWQ's must be.
  * Candidates are scored by the layer-output error ||(W - W')X||^2 over *all* calibration tokens,
    computed from the shared Hessian H ~ X^T X as tr((W - W') H (W - W')^T), instead of on a subsample
    of stored activations; for a group the errors of its layers are summed. The clipping error of each
    (row, quantization group) uses the matching diagonal block of H, as AWQ's per-group output error.
"""
from __future__ import annotations

import torch

from harness.calibration import LayerwiseMethod
from harness.config import ConfigError
from harness.methods.gptq import gptq_quantize
from harness.quant import QuantFormat, fake_quantize, grouped


def weight_scale(weight: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """mean|w| per input channel, each weight relative to the max |w| of its quantization group (AutoAWQ)."""
    w = grouped(weight, fmt).abs()
    return (w / (w.amax(-1, keepdim=True) + 1e-6)).reshape(weight.shape).mean(0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """s for one alpha (w_mean None: activation-only scaling), normalized to geometric-mean-of-range 1."""
    s = x_mean.pow(alpha)
    if w_mean is not None:
        s = s / (w_mean.pow(1 - alpha) + 1e-4)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def scaled_fake_quantize(weight: torch.Tensor, scales: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Q(W diag(s)) diag(s)^-1: the scaled layer, quantized, with the scale folded back into it."""
    return fake_quantize(weight * scales, fmt) / scales


def output_error(delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """||delta X||^2 up to a constant factor: tr(delta H delta^T)."""
    return ((delta @ hessian) * delta).sum()


def search_scales(
    weight: torch.Tensor, hessian: torch.Tensor, x_mean: torch.Tensor, fmt: QuantFormat, n_grid: int, duo_scaling: bool
) -> torch.Tensor:
    """The candidate s with the lowest output error of the RTN-quantized scaled weight."""
    w_mean = weight_scale(weight, fmt) if duo_scaling else None
    best_error, best = float("inf"), None
    for k in range(n_grid):
        s = candidate_scales(x_mean, w_mean, k / n_grid)
        error = output_error(weight - scaled_fake_quantize(weight, s, fmt), hessian).item()
        if error < best_error:
            best_error, best = error, s
    return best


def search_clip(weight: torch.Tensor, hessian: torch.Tensor, fmt: QuantFormat, n_grid: int, max_shrink: float) -> torch.Tensor:
    """`weight` clamped to +-c per (row, quantization group), c = max|w| * (1 - k/n_grid) for the k
    below max_shrink * n_grid that gives the lowest output error of that group's RTN weights."""
    w = grouped(weight, fmt)  # [rows, groups, group_len]
    groups, length = w.shape[1:]
    # Diagonal blocks of H: [groups, group_len, group_len].
    blocks = hessian.reshape(groups, length, groups, length).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    full = w.abs().amax(-1, keepdim=True)
    best_error = torch.full(w.shape[:2], float("inf"), device=w.device)
    best_limit = full.clone()
    for k in range(int(max_shrink * n_grid)):
        limit = full * (1 - k / n_grid)
        delta = w - grouped(fake_quantize(w.clamp(-limit, limit).reshape(weight.shape), fmt), fmt)
        error = torch.einsum("rgi,gij,rgj->rg", delta, blocks, delta)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_limit = torch.where(better.unsqueeze(-1), limit, best_limit)
    return w.clamp(-best_limit, best_limit).reshape(weight.shape)


class AWQ(LayerwiseMethod):
    name = "awq"
    quantizes = True
    stats = ("hessian", "abs_mean")

    def __init__(
        self,
        n_grid: int = 20,
        duo_scaling: bool = True,
        clip: bool = True,
        clip_grid: int = 20,
        max_shrink: float = 0.5,
        clip_skip: list[str] | tuple[str, ...] = ("q_proj", "k_proj"),
        quantizer: str = "rtn",
        damp: float = 0.01,
        block_size: int = 128,
        true_sequential: bool = True,
    ) -> None:
        if quantizer not in ("rtn", "gptq"):
            raise ConfigError(f"method=awq: quantizer={quantizer!r}, expected rtn or gptq")
        if n_grid < 1 or clip_grid < 1 or not 0 <= max_shrink < 1:
            raise ConfigError("method=awq: need n_grid >= 1, clip_grid >= 1, 0 <= max_shrink < 1")
        super().__init__(
            true_sequential, n_grid=n_grid, duo_scaling=duo_scaling, clip=clip, clip_grid=clip_grid,
            max_shrink=max_shrink, clip_skip=list(clip_skip), quantizer=quantizer, damp=damp, block_size=block_size,
        )
        self.n_grid, self.duo_scaling, self.clip = int(n_grid), bool(duo_scaling), bool(clip)
        self.clip_grid, self.max_shrink, self.clip_skip = int(clip_grid), float(max_shrink), set(clip_skip)
        self.quantizer, self.damp, self.block_size = quantizer, float(damp), int(block_size)

    @torch.no_grad()
    def compress_group(self, layers, inputs, compression) -> None:
        fmt = compression.quant
        weights = [layer.weight for layer in layers.values()]
        w = torch.cat(weights).float()
        s = search_scales(w, inputs.hessian, inputs.abs_mean, fmt, self.n_grid, self.duo_scaling)
        # The scaled layer W diag(s) reads X diag(s)^-1, whose Hessian is diag(s)^-1 H diag(s)^-1.
        scaled, hessian = w * s, inputs.hessian / torch.outer(s, s)
        rows = list(scaled.split([x.shape[0] for x in weights]))
        if self.clip:
            # AWQ leaves q and k unclipped: their output error is a poor proxy for the attention scores'.
            rows = [
                r if name.rsplit(".", 1)[-1] in self.clip_skip else search_clip(r, hessian, fmt, self.clip_grid, self.max_shrink)
                for name, r in zip(layers, rows)
            ]
        scaled = torch.cat(rows)
        if self.quantizer == "gptq":
            q = gptq_quantize(scaled, hessian, fmt, self.damp, self.block_size)
        else:
            q = fake_quantize(scaled, fmt)
        for weight, part in zip(weights, (q / s).split([x.shape[0] for x in weights])):
            weight.copy_(part)


METHOD_CLASS = AWQ
