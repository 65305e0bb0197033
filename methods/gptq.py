"""GPTQ (Frantar et al., 2022): quantize one input column at a time and spread each column's rounding
error over the columns not yet quantized, through the inverse Hessian of the layer-output error
||WX - W'X||^2 (H = 2 X^T X / n_samples, from harness/numerics/calibration.py).

The column sweep (`obs_sweep`) is also SparseGPT's: both are Optimal Brain Surgeon updates with lazy
batched updates of `block_size` columns. It follows the reference implementation: dampening
H += damp * mean(diag H) * I, the upper Cholesky factor of H^-1, dead inputs (diag H = 0) get
diag 1 and zero weights, act-order sweeps columns by decreasing diag H. On CUDA each block of columns
is one Triton launch (harness/numerics/obs_sweep_triton.py), equal bit for bit to the Python column loop here,
which stays the reference and the CPU path.
"""
from __future__ import annotations

from functools import partial

import torch

from harness.numerics.calibration import LayerwiseMethod
from harness.config import ConfigError
from harness.numerics.quant import ColumnParams, QuantFormat, grouped, quant_params, quantize_dequantize
from harness.numerics.sparsity import SparsityPattern, nm_mask


class ColumnQuantizer:
    """The quantization parameters of a sweep's columns, with GPTQ's group conventions (gptq.py fasterquant):
      * per-row format (group_size -1): one (scale, zero) per row, from the weight it is given;
      * static groups: every group's parameters from the weight it is given, in the original column
        order (`order`: sweep position -> original column, with act-order), so a group stays
        `group_size` contiguous input columns however the sweep is ordered;
      * otherwise a group's parameters are computed when the sweep reaches its first column, from
        `group_size` columns of the matrix being swept as it stands then: the current block's columns
        as they were at the start of the block, later ones with the updates of earlier blocks only
        (the reference's W[:, (i1 + i):(i1 + i + groupsize)]). With act-order these are consecutive
        columns of the permuted matrix.
    The sweep never changes `weight` inside a block, so every column's parameters are known when a
    block starts: `block_params` gives them all at once, for the Python column loop and the Triton
    kernel alike."""

    def __init__(self, fmt: QuantFormat, weight: torch.Tensor, order: torch.Tensor | None = None, static: bool = False) -> None:
        self.fmt = fmt
        self.group = fmt.group_len(weight.shape[1])
        self.dynamic = fmt.group_size != -1 and not static
        if self.dynamic:
            self.open_scale = self.open_zero = None  # [1, rows]: the group the sweep is in
        else:
            self.scale, self.zero = (p[..., 0].T.contiguous() for p in quant_params(grouped(weight, fmt), fmt))  # [groups, rows]
            original = torch.arange(weight.shape[1], device=weight.device) if order is None else order
            self.column_group = original // self.group  # sweep position -> group

    def block_params(self, weight: torch.Tensor, b0: int, b1: int) -> ColumnParams:
        """Parameters of sweep columns b0..b1-1, each [b1 - b0, rows]; `weight` is the matrix being
        swept as it stands at the start of the block."""
        if self.dynamic:
            scale, zero, group = self.started_groups(weight, b0, b1)
        else:
            scale, zero, group = self.scale, self.zero, self.column_group[b0:b1]
        return ColumnParams(scale[group], zero[group], self.fmt.maxq)

    def started_groups(self, weight: torch.Tensor, b0: int, b1: int):
        """Dynamic groups: the parameters of the groups that columns b0..b1-1 fall in, [groups, rows],
        the open one carried from an earlier block first, and each column's index into them."""
        g = self.group
        first = -(-b0 // g) * g  # first group starting in this block
        scale, zero = ([], []) if first == b0 else ([self.open_scale], [self.open_zero])
        if first < b1:
            starts = range(first, b1, g)
            columns = weight[:, first : starts[-1] + g]
            # The last group may run past the matrix (the reference slices it short): zero columns
            # change nothing, since the range [min(w, 0), max(w, 0)] always holds 0.
            columns = torch.nn.functional.pad(columns, (0, len(starts) * g - columns.shape[1]))
            new_scale, new_zero = quant_params(columns.reshape(columns.shape[0], len(starts), g), self.fmt)
            scale.append(new_scale[..., 0].T)
            zero.append(new_zero[..., 0].T)
        scale, zero = torch.cat(scale), torch.cat(zero)
        self.open_scale, self.open_zero = scale[-1:], zero[-1:]
        return scale, zero, torch.arange(b0, b1, device=weight.device) // g - b0 // g


def column_quantizer(fmt: QuantFormat, weight: torch.Tensor, dead: torch.Tensor, static: bool = False, order=None) -> ColumnQuantizer:
    """The reference's quantizer for a weight whose `dead` inputs are about to be zeroed: per-row
    parameters come from the weight before (find_params(W) runs first), static groups after."""
    if fmt.group_size == -1:
        return ColumnQuantizer(fmt, weight, order)
    zeroed = weight.clone()
    zeroed[:, dead] = 0
    return ColumnQuantizer(fmt, zeroed, order, static)


def inverse_hessian_upper(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, dead inputs' diagonal set to 1 first."""
    h = hessian.float().clone()
    diag = h.diagonal()
    diag[diag == 0] = 1
    diag.add_(damp * diag.mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def dead_inputs(hessian: torch.Tensor) -> torch.Tensor:
    """Input channels that were 0 on every calibration token: their weights are set to 0."""
    return hessian.diagonal() == 0


def sweep_block(block_size: int, m: int | None) -> int:
    """Columns per lazy-update block: `block_size`, or the largest size below it (at least one N:M
    chunk) that holds whole N:M chunks."""
    for size in range(max(block_size, m or 1), 0, -1):
        if m is None or size % m == 0:
            return size
    raise ValueError(f"no block of columns holds whole N:M chunks (M={m})")


def unstructured_keep(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """SparseGPT's mask for one block: prune every score <= the int(sparsity * numel)-th smallest (0-based),
    as the reference's `tmp <= thresh`: one weight more than int(sparsity * numel) per block, barring ties."""
    thresh = torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
    return score > thresh


def obs_score(w: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
    """SparseGPT's pruning saliency w^2 / [H^-1]_jj^2 (the OBS error of removing w_j)."""
    return w.square() / hinv_diag.square()


def obs_sweep(
    weight: torch.Tensor,
    hinv: torch.Tensor,
    block_size: int,
    quantizer: ColumnQuantizer | None = None,
    pattern: SparsityPattern | None = None,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """The OBS column sweep of GPTQ and SparseGPT. `weight` [rows, cols] float32 is used as scratch;
    `hinv` is the upper Cholesky factor of H^-1. Each column is pruned (if `pattern`: its mask chosen
    per block for unstructured sparsity, per M columns for N:M, from `obs_score`), then quantized
    (if `quantizer`: SparseGPT's joint mode), and its error is spread over the later columns.
    The columns of a block are swept by one Triton launch (harness/numerics/obs_sweep_triton.py) when
    `use_triton` says so; None: on CUDA, unless N:M (whose masks are chosen inside the block).
    Returns the compressed weight and the number of weights the masks kept (quantization may round
    some kept weights to 0 as well)."""
    out = torch.empty_like(weight)
    rows, cols = weight.shape
    nm = (pattern.n, pattern.m) if pattern is not None and pattern.is_nm else None
    block = sweep_block(block_size, nm[1] if nm else None)
    sweep_columns = column_loop(weight, nm, use_triton)
    kept = torch.zeros((), dtype=torch.int64, device=weight.device)
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        hinv1 = hinv[b0:b1, b0:b1]
        keep = block_keep(weight[:, b0:b1], hinv1, pattern)
        # From `weight`, not the block's updated columns: the reference's rule (ColumnQuantizer).
        params = quantizer.block_params(weight, b0, b1) if quantizer is not None else None
        err = sweep_columns(weight[:, b0:b1], hinv1, out[:, b0:b1], params, keep)
        weight[:, b1:] -= err @ hinv[b0:b1, b1:]
        kept += rows * (b1 - b0) if keep is None else keep.sum()
    return out, int(kept)


def block_keep(w: torch.Tensor, hinv1: torch.Tensor, pattern: SparsityPattern | None) -> torch.Tensor | None:
    """A block's mask as known at its start: SparseGPT's unstructured mask, chosen from the whole block;
    for N:M all True, filled in by the column loop every M columns."""
    if pattern is None:
        return None
    if pattern.is_nm:
        return torch.ones_like(w, dtype=torch.bool)
    return unstructured_keep(obs_score(w, hinv1.diagonal()), pattern.sparsity)


def column_loop(weight: torch.Tensor, nm: tuple[int, int] | None, use_triton: bool | None):
    """The sweep of one block's columns: the Triton kernel or `python_column_loop` (with N:M's (n, m))."""
    if use_triton is None:
        use_triton = weight.is_cuda and nm is None
    if not use_triton:
        return partial(python_column_loop, nm=nm)
    if nm is not None:
        raise ValueError("the Triton sweep takes masks chosen per block: N:M masks are chosen inside it")
    from harness.numerics.obs_sweep_triton import sweep_block as triton_sweep_block  # imports triton

    return triton_sweep_block


def python_column_loop(
    w: torch.Tensor, hinv1: torch.Tensor, out: torch.Tensor, params: ColumnParams | None, keep: torch.Tensor | None,
    nm: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The sweep of one block, a column at a time (the reference for harness/numerics/obs_sweep_triton.py
    sweep_block, which takes the same arguments): `w` [rows, width] the block of the weight (read
    only), `hinv1` its diagonal block of the upper Cholesky factor of H^-1, `keep` the block's mask or
    None; writes the compressed columns to `out` and returns the scaled errors [rows, width] for the
    update of the later columns. With N:M (`nm`), fills `keep` every M columns from the updated weights."""
    w1 = w.clone()
    d = hinv1.diagonal()
    err = torch.zeros_like(w1)
    for i in range(w1.shape[1]):
        if nm is not None and i % nm[1] == 0:
            n, m = nm
            keep[:, i : i + m] = nm_mask(obs_score(w1[:, i : i + m], d[i : i + m]), n, m)
        w = w1[:, i]
        q = w if keep is None else w.masked_fill(~keep[:, i], 0)
        if params is not None:
            q = quantize_dequantize(q, params.scale[i], params.zero[i], params.maxq)
        out[:, i] = q
        e = (w - q) / d[i]
        w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
        err[:, i] = e
    return err


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    fmt: QuantFormat,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    static_groups: bool = False,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """GPTQ of a [rows, cols] weight given its input Hessian (gptq.py fasterquant); returns the
    fake-quantized weight in float32. With `act_order`, columns are swept by decreasing diag H;
    `static_groups` computes every group's parameters before the sweep (ColumnQuantizer);
    `use_triton` as in `obs_sweep`."""
    w = weight.float().clone()
    dead = dead_inputs(hessian)
    order = torch.argsort(hessian.diagonal(), descending=True, stable=True) if act_order else None
    quantizer = column_quantizer(fmt, w, dead, static_groups, order)
    w[:, dead] = 0
    if order is not None:
        w, hessian = w[:, order], hessian[order][:, order]
    q, _ = obs_sweep(w, inverse_hessian_upper(hessian, damp), block_size, quantizer, use_triton=use_triton)
    return q if order is None else q[:, torch.argsort(order)]


class GPTQ(LayerwiseMethod):
    name = "gptq"
    quantizes = True
    stats = ("hessian",)

    def __init__(
        self, damp: float = 0.01, block_size: int = 128, act_order: bool = False, static_groups: bool = False, true_sequential: bool = True
    ) -> None:
        if not damp > 0 or block_size < 1:
            raise ConfigError(f"method=gptq: damp={damp} must be > 0 and block_size={block_size} >= 1")
        super().__init__(true_sequential, damp=damp, block_size=block_size, act_order=act_order, static_groups=static_groups)
        self.damp, self.block_size, self.act_order = float(damp), int(block_size), bool(act_order)
        self.static_groups = bool(static_groups)

    @torch.no_grad()
    def compress_group(self, layers, inputs, compression) -> None:
        # Rows are independent given H, so the layers sharing it (q, k, v) are quantized as one matrix.
        weights = [layer.weight for layer in layers.values()]
        q = gptq_quantize(
            torch.cat(weights), inputs.hessian, compression.quant, self.damp, self.block_size, self.act_order, self.static_groups
        )
        for weight, rows in zip(weights, q.split([w.shape[0] for w in weights])):
            weight.copy_(rows)


METHOD_CLASS = GPTQ
