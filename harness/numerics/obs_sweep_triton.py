"""One lazy-update block of the OBS column sweep (methods/gptq.py `obs_sweep`) as one Triton launch.

The Python sweep spends ~10-15 small CUDA launches per column; a Llama-3-8B block has ~26,600 columns.
Here a program owns `rows_per_program` rows of the block's columns in registers and walks the columns
itself: rows are independent given H^-1, so no program waits for another. Everything the reference
decides at the start of a block (the unstructured mask, the quantization parameters of every column:
`ColumnQuantizer.block_params`) comes in precomputed; the update of the later blocks
(weight[:, b1:] -= err @ H^-1[b0:b1, b1:]) stays a torch matmul in `obs_sweep`.

Numerics equal the Python sweep's bit for bit (tests/test_obs_sweep_triton.py): IEEE division
(div_rn; Triton's plain fp32 `/` may be approximate on GPUs), rounding half to even as torch.round, no
fused multiply-add (the Python sweep multiplies and subtracts in two rounded steps), and the column
update masked to the columns >= i.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from harness.numerics.quant import ColumnParams

# x + 1.5 * 2^23 - 1.5 * 2^23 rounds an fp32 |x| <= 2^22 to an integer, half to even (as torch.round):
# the sum lies in [2^23, 2^24], where fp32 holds integers only.
ROUNDER = tl.constexpr(12582912.0)
ROUNDER_RANGE = tl.constexpr(4194304.0)


@triton.jit
def _quantize_dequantize(w, scale, zero, maxq):
    """harness/numerics/quant.py quantize_dequantize: scale * (clamp(round(w / scale) + zero, 0, maxq) - zero).
    Values past +-2^22 are clamped before rounding: the final clamp to [0, maxq] maps them the same."""
    x = tl.minimum(tl.maximum(tl.math.div_rn(w, scale), -ROUNDER_RANGE), ROUNDER_RANGE)
    x = (x + ROUNDER) - ROUNDER
    q = tl.minimum(tl.maximum(x + zero, 0.0), maxq)
    return scale * (q - zero)


@triton.jit
def _obs_block_kernel(
    w_ptr, w_stride, hinv_ptr, hinv_stride, scale_ptr, zero_ptr, param_stride, keep_ptr, keep_stride,
    out_ptr, out_stride, err_ptr, err_stride, rows, maxq,
    QUANTIZE: tl.constexpr, PRUNE: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, WIDTH: tl.constexpr,
):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, COLS)
    in_rows = r < rows
    in_tile = in_rows[:, None] & (c < WIDTH)[None, :]
    w1 = tl.load(w_ptr + r[:, None] * w_stride + c[None, :], mask=in_tile, other=0.0)
    q_tile = tl.zeros([ROWS, COLS], dtype=tl.float32)
    e_tile = tl.zeros([ROWS, COLS], dtype=tl.float32)
    for i in range(WIDTH):  # a compile-time bound: Triton 3.6's interpreter cannot loop to a runtime scalar
        h = tl.load(hinv_ptr + i * hinv_stride + c, mask=c < WIDTH, other=0.0)  # row i of H^-1 (upper)
        d = tl.load(hinv_ptr + i * hinv_stride + i)
        at_i = c[None, :] == i
        w = tl.sum(tl.where(at_i, w1, 0.0), axis=1)  # column i, exact: every other term is 0
        q = w
        if PRUNE:
            keep = tl.load(keep_ptr + r * keep_stride + i, mask=in_rows, other=1)
            q = tl.where(keep != 0, q, 0.0)
        if QUANTIZE:
            scale = tl.load(scale_ptr + i * param_stride + r, mask=in_rows, other=1.0)
            zero = tl.load(zero_ptr + i * param_stride + r, mask=in_rows, other=0.0)
            q = _quantize_dequantize(q, scale, zero, maxq)
        e = tl.math.div_rn(w - q, d)
        w1 = tl.where(c[None, :] >= i, w1 - e[:, None] * h[None, :], w1)
        q_tile = tl.where(at_i, q[:, None], q_tile)
        e_tile = tl.where(at_i, e[:, None], e_tile)
    tl.store(out_ptr + r[:, None] * out_stride + c[None, :], q_tile, mask=in_tile)
    tl.store(err_ptr + r[:, None] * err_stride + c[None, :], e_tile, mask=in_tile)


def sweep_block(
    w: torch.Tensor,
    hinv1: torch.Tensor,
    out: torch.Tensor,
    params: ColumnParams | None,
    keep: torch.Tensor | None,
    rows_per_program: int | None = None,
    num_warps: int = 4,
) -> torch.Tensor:
    """Sweep the columns of one block: `w` [rows, width] (the block of the weight, read only), `hinv1`
    [width, width] its diagonal block of the upper Cholesky factor of H^-1, `keep` [rows, width] the
    unstructured mask or None. Writes the compressed columns to `out` [rows, width] and returns the
    scaled errors err [rows, width] for the update of the later columns. Views with unit column stride."""
    rows, width = w.shape
    hinv1 = hinv1.contiguous()  # the Cholesky factor comes column-major; the kernel reads its rows
    cols = triton.next_power_of_2(width)
    block_rows = rows_per_program or max(1, min(16, 2048 // cols))  # ~2048 fp32 values a tile
    err = torch.empty((rows, width), dtype=torch.float32, device=w.device)
    scale = zero = err  # never read unless QUANTIZE
    if params is not None:
        scale, zero = params.scale, params.zero
    keep_bytes = keep.view(torch.uint8) if keep is not None else err  # never read unless PRUNE
    for t in (w, hinv1, out, scale, zero, keep_bytes):
        assert t.stride(-1) == 1, "the kernel reads rows with unit column stride"
    _obs_block_kernel[(triton.cdiv(rows, block_rows),)](
        w, w.stride(0), hinv1, hinv1.stride(0), scale, zero, scale.stride(0), keep_bytes, keep_bytes.stride(0),
        out, out.stride(0), err, err.stride(0), rows, params.maxq if params is not None else 0,
        QUANTIZE=params is not None, PRUNE=keep is not None, ROWS=block_rows, COLS=cols, WIDTH=width,
        num_warps=num_warps, enable_fp_fusion=False,
    )
    return err
