"""FROZEN COPY of kernels/intq.py at KERNEL_VERSION 2 (commit 2a6d81b), the baseline that
benchmarks/gemv_bench.py times and benchmarks/kernel_sass.py disassembles next to the current kernels.
Not used by the harness; do not edit (a change here changes the baseline). Its own docstring follows.

Packed 2/3/4/8-bit group-wise integer weights, run by our own Triton kernels (weight-only: the
activations stay bfloat16; weights are dequantized in registers, never written back as bf16 except
on the large-batch path, which dequantizes one layer into a scratch buffer and calls cuBLAS).

Packing format (version `KERNEL_VERSION`)
-----------------------------------------
A weight W [N out, K in] is stored as integer codes q in [0, 2^bits) with a scale s and an offset b
per (row, group) of `group_size` consecutive input columns:  W[n, k] = q * s + b  (s and b float16;
float32 at 8 bits, where a float16 scale's rounding times codes up to 255 would exceed bf16's).
(Symmetric and asymmetric grids, integer or float zero points, are all this one affine form:
b = -zero * s.) The K axis is cut into tiles of TILE = 32 * WORDS consecutive columns, each tile
inside one group: WORDS = min(4, group_size / 32) (per channel: 4; K is then zero-padded to a whole
tile). A tile is 32 "slices" of WORDS consecutive columns; slice i holds columns i*WORDS .. +WORDS-1.

The codes are split into bit planes of 1, 2, 4 or 8 bits, so that every field sits wholly inside one
int32 word: 2 bits -> [2], 3 bits -> [2, 1] (low two bits, then the high bit), 4 -> [4], 8 -> [8].
A plane of p bits holds F = 32 / p fields per word and takes p words per slice column of a tile:
plane tensor [N, T tiles, p, WORDS] int32, where word (n, t, c, w) holds in bits f*p .. f*p+p-1 the
plane's bits of column t*TILE + (c*F + f)*WORDS + w. So 32 consecutive columns of WORDS-strided
slices cost exactly `bits` words per WORDS columns (3 bits per weight for W3, no waste), a thread
loads WORDS contiguous words (16 bytes) per plane column, and unpacking is one shift and one mask
per field, with the shift amount a compile-time constant per field.

Kernels
-------
  * decode (M <= 16 tokens): a split-K GEMV on CUDA cores. Per word it accumulates sum(q * x) and
    sum(x) over the word's fields, then applies s and b once: sum_k (q s + b) x = s sum q x + b sum x.
  * small batches (from 5 tokens) and prefill: a tiled GEMM; each tile is unpacked, dequantized to bf16 in registers
    and multiplied on tensor cores (tl.dot), fp32 accumulation, split-K when the grid is small.
  * large batches: dequantize the layer to a bf16 scratch buffer, then torch.matmul (cuBLAS); for
    each shape the faster of this and the fused GEMM is picked by timing both at first use.
Split-K partial sums go to an fp32 buffer and one small kernel adds them and writes bf16.
Launch configurations are tuned per (shape, bits, token bucket) by timing a small candidate set at
the first eager call (never during CUDA-graph capture) and cached for the process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from harness.kernels.intq import fit_grid  # the grid fit is the same in both versions: only packing and kernels are frozen

try:  # the packing format is pure torch (testable anywhere); the kernels need Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CI installs triton; a bare CPU machine may not have it
    triton = None

NAME = "triton-intq"
KERNEL_VERSION = "2"
PLANES = {2: (2,), 3: (2, 1), 4: (4,), 8: (8,)}
SUPPORTED_BITS = tuple(PLANES)


@dataclass(frozen=True)
class Layout:
    bits: int
    in_features: int
    group_size: int  # -1: per output channel
    words: int  # WORDS: columns per slice

    @classmethod
    def of(cls, bits: int, in_features: int, group_size: int) -> "Layout":
        reason = unsupported_reason(bits, group_size)
        if reason or (group_size != -1 and in_features % group_size):
            raise ValueError(reason or f"group_size={group_size} does not divide in_features={in_features}")
        words = 4 if group_size == -1 else min(4, group_size // 32)
        return cls(bits, in_features, group_size, words)

    @property
    def param_dtype(self) -> torch.dtype:
        """Scale and offset storage: float16, except at 8 bits, where codes up to 255 would multiply a
        float16 scale's rounding past the bf16 rounding of the weights themselves."""
        return torch.float32 if self.bits == 8 else torch.float16

    @property
    def tile(self) -> int:
        return 32 * self.words

    @property
    def padded_in(self) -> int:
        return math.ceil(self.in_features / self.tile) * self.tile

    @property
    def tiles(self) -> int:
        return self.padded_in // self.tile

    @property
    def group_len(self) -> int:
        return self.padded_in if self.group_size == -1 else self.group_size

    @property
    def groups(self) -> int:
        return self.padded_in // self.group_len

    @property
    def tiles_per_group(self) -> int:
        return self.group_len // self.tile


def unsupported_reason(bits: int, group_size: int) -> str | None:
    if bits not in PLANES:
        return f"{bits}-bit weights: the integer kernels pack {', '.join(map(str, SUPPORTED_BITS))} bits"
    if group_size != -1 and group_size % 32:
        return f"group_size={group_size}: the integer kernels need a multiple of 32 (or -1, per channel)"
    return None


# ---------------------------------------------------------------- packing (pure torch, exact)


def pack_codes(codes: torch.Tensor, layout: Layout) -> list[torch.Tensor]:
    """Integer codes [N, K] -> the bit-plane tensors [N, T, p, WORDS] int32 of the format above."""
    rows = codes.shape[0]
    q = torch.zeros(rows, layout.padded_in, dtype=torch.int64, device=codes.device)
    q[:, : codes.shape[1]] = codes.to(torch.int64)
    q = q.view(rows, layout.tiles, 32, layout.words)
    planes, shift = [], 0
    for p in PLANES[layout.bits]:
        fields = 32 // p
        v = ((q >> shift) & (2**p - 1)).view(rows, layout.tiles, p, fields, layout.words)
        word = (v << (torch.arange(fields, device=q.device) * p).view(1, 1, 1, fields, 1)).sum(3)
        planes.append(torch.where(word >= 2**31, word - 2**32, word).to(torch.int32))  # two's complement
        shift += p
    return planes


def unpack_codes(planes: list[torch.Tensor], layout: Layout) -> torch.Tensor:
    """The inverse of pack_codes: [N, K] int64 codes."""
    rows = planes[0].shape[0]
    q = torch.zeros(rows, layout.tiles, 32, layout.words, dtype=torch.int64, device=planes[0].device)
    shift = 0
    for p, plane in zip(PLANES[layout.bits], planes):
        fields = 32 // p
        word = plane.to(torch.int64).view(rows, layout.tiles, p, 1, layout.words)
        v = (word >> (torch.arange(fields, device=q.device) * p).view(1, 1, 1, fields, 1)) & (2**p - 1)
        q |= v.reshape(rows, layout.tiles, 32, layout.words) << shift
        shift += p
    return q.view(rows, layout.padded_in)[:, : layout.in_features]


class PackedLinear(nn.Module):
    """y = x W^T (+ bias) with W packed as above; weights resident only in packed form."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, layout: Layout, bias=None):
        super().__init__()
        self.layout = layout
        self.out_features, self.in_features = codes.shape
        for i, plane in enumerate(pack_codes(codes, layout)):
            self.register_buffer(f"plane{i}", plane)
        pad = layout.groups - scale.shape[1]  # per channel with a padded K keeps one group
        self.register_buffer("scale", nn.functional.pad(scale, (0, pad)).to(layout.param_dtype).contiguous())
        self.register_buffer("offset", nn.functional.pad(offset, (0, pad)).to(layout.param_dtype).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int) -> tuple["PackedLinear", float]:
        """Pack a compressed nn.Linear; also returns fit_grid's relative weight error."""
        layout = Layout.of(bits, linear.in_features, group_size)
        codes, scale, offset, error = fit_grid(linear.weight.detach(), layout)
        return cls(codes, scale, offset, layout, linear.bias), error

    @property
    def planes(self) -> list[torch.Tensor]:
        return [getattr(self, f"plane{i}") for i in range(len(PLANES[self.layout.bits]))]

    def dequantized(self) -> torch.Tensor:
        """W as float32 [N, K] from the packed form (the reference the kernels are checked against)."""
        layout = self.layout
        q = unpack_codes(self.planes, layout).float()
        g = layout.group_len if layout.group_size != -1 else self.in_features
        expand = lambda t: t[:, : math.ceil(self.in_features / g)].float().repeat_interleave(g, 1)[:, : self.in_features]
        return q * expand(self.scale) + expand(self.offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":  # CPU: the same function through torch, for tests only (never timed)
            y = x @ self.dequantized().to(x.dtype).T
        else:
            y = matmul(x.reshape(-1, self.in_features), self).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def convert(linear: nn.Linear, compression, method_options: dict) -> tuple[PackedLinear, float]:
    return PackedLinear.from_linear(linear, compression.quant.bits, compression.quant.group_size)


# ---------------------------------------------------------------- Triton kernels

if triton is not None:

    @triton.jit
    def _plane_dot(p_ptr, x_ptr, rows, row_mask, t0, t_end, T, K, TILE: tl.constexpr, P: tl.constexpr,
                   WORDS: tl.constexpr, TT: tl.constexpr, BN: tl.constexpr):
        """For TT tiles from t0 of one bit plane, per (row, plane column j = tile * P + c, word): the sum
        over the word's F fields of q * x, and per (plane column, word) the sum of those x. Everything
        stays in the layout of the loaded words: one shift, mask, convert and FMA per weight, no shuffles."""
        F: tl.constexpr = 32 // P
        j = tl.arange(0, TT * P)
        w = tl.arange(0, WORDS)
        tile = t0 + j // P
        live = tile < t_end
        off = rows[:, None, None] * (T * P * WORDS) + (t0 * P + j)[None, :, None] * WORDS + w[None, None, :]
        words = tl.load(p_ptr + off, mask=row_mask[:, None, None] & live[None, :, None], other=0)
        k0 = tile[:, None] * TILE + ((j % P) * F)[:, None] * WORDS + w[None, :]  # column of field 0
        qx = tl.zeros([BN, TT * P, WORDS], tl.float32)
        xs = tl.zeros([TT * P, WORDS], tl.float32)
        for f in tl.static_range(F):
            k = k0 + f * WORDS
            xv = tl.load(x_ptr + k, mask=live[:, None] & (k < K), other=0.0).to(tl.float32)
            qx += ((words >> (f * P)) & ((1 << P) - 1)).to(tl.float32) * xv[None, :, :]
            xs += xv
        return qx, xs, tile

    @triton.jit
    def _gemv_kernel(x_ptr, p0_ptr, p1_ptr, s_ptr, b_ptr, out_ptr, N, K, T, tiles_per_split, n_groups,
                     tiles_per_group, stride_xm, P0: tl.constexpr, P1: tl.constexpr, WORDS: tl.constexpr,
                     BN: tl.constexpr, TT: tl.constexpr, PARTIAL: tl.constexpr):
        pid_n, split, m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        TILE: tl.constexpr = 32 * WORDS
        rows = pid_n * BN + tl.arange(0, BN)
        row_mask = rows < N
        x_row = x_ptr + m * stride_xm
        t_begin = split * tiles_per_split
        t_end = tl.minimum(T, t_begin + tiles_per_split)
        acc0 = tl.zeros([BN, TT * P0, WORDS], tl.float32)
        acc1 = tl.zeros([BN, TT, WORDS], tl.float32)  # P1 is 0 or 1 (only W3 has a second plane)
        for t0 in range(t_begin, t_end, TT):
            qx, xs, tile = _plane_dot(p0_ptr, x_row, rows, row_mask, t0, t_end, T, K, TILE, P0, WORDS, TT, BN)
            gm = row_mask[:, None] & (tile < t_end)[None, :]
            g = rows[:, None] * n_groups + (tile // tiles_per_group)[None, :]
            s = tl.load(s_ptr + g, mask=gm, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + g, mask=gm, other=0.0).to(tl.float32)
            acc0 += s[:, :, None] * qx + b[:, :, None] * xs[None, :, :]
            if P1 > 0:
                qx1, _, tile1 = _plane_dot(p1_ptr, x_row, rows, row_mask, t0, t_end, T, K, TILE, P1, WORDS, TT, BN)
                g1 = rows[:, None] * n_groups + (tile1 // tiles_per_group)[None, :]
                s1 = tl.load(s_ptr + g1, mask=row_mask[:, None] & (tile1 < t_end)[None, :], other=0.0).to(tl.float32)
                acc1 += (s1 * (1 << P0))[:, :, None] * qx1
        y = tl.sum(tl.sum(acc0, axis=2), axis=1)
        if P1 > 0:
            y += tl.sum(tl.sum(acc1, axis=2), axis=1)
        if PARTIAL:
            tl.store(out_ptr + (split * tl.num_programs(2) + m) * N + rows, y, mask=row_mask)
        else:
            tl.store(out_ptr + m * N + rows, y.to(tl.bfloat16), mask=row_mask)

    @triton.jit
    def _plane_codes(p_ptr, rows, row_mask, t, T, P: tl.constexpr, WORDS: tl.constexpr, BN: tl.constexpr):
        """One tile of one bit plane as [BN, TILE] codes in column order."""
        F: tl.constexpr = 32 // P
        c = tl.arange(0, P)
        f = tl.arange(0, F)
        w = tl.arange(0, WORDS)
        off = rows[:, None, None] * (T * P * WORDS) + (t * P + c)[None, :, None] * WORDS + w[None, None, :]
        words = tl.load(p_ptr + off, mask=row_mask[:, None, None], other=0)
        q = (words[:, :, None, :] >> (f * P)[None, None, :, None]) & ((1 << P) - 1)
        return tl.reshape(q, [BN, 32 * WORDS])

    @triton.jit
    def _dequant_tile(p0_ptr, p1_ptr, s_ptr, b_ptr, rows, row_mask, t, T, n_groups, tiles_per_group,
                      P0: tl.constexpr, P1: tl.constexpr, WORDS: tl.constexpr, BN: tl.constexpr):
        q = _plane_codes(p0_ptr, rows, row_mask, t, T, P0, WORDS, BN)
        if P1 > 0:
            q += _plane_codes(p1_ptr, rows, row_mask, t, T, P1, WORDS, BN) << P0
        g = rows * n_groups + t // tiles_per_group
        s = tl.load(s_ptr + g, mask=row_mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + g, mask=row_mask, other=0.0).to(tl.float32)
        return (q.to(tl.float32) * s[:, None] + b[:, None]).to(tl.bfloat16)

    @triton.jit
    def _gemm_kernel(x_ptr, p0_ptr, p1_ptr, s_ptr, b_ptr, out_ptr, M, N, K, T, tiles_per_split, n_groups,
                     tiles_per_group, stride_xm, P0: tl.constexpr, P1: tl.constexpr, WORDS: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, PARTIAL: tl.constexpr):
        pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        TILE: tl.constexpr = 32 * WORDS
        rows_m = pid_m * BM + tl.arange(0, BM)
        rows_n = pid_n * BN + tl.arange(0, BN)
        n_mask = rows_n < N
        kk = tl.arange(0, TILE)
        acc = tl.zeros([BM, BN], tl.float32)
        t_begin = split * tiles_per_split
        t_end = tl.minimum(T, t_begin + tiles_per_split)
        for t in range(t_begin, t_end):
            wt = _dequant_tile(p0_ptr, p1_ptr, s_ptr, b_ptr, rows_n, n_mask, t, T, n_groups, tiles_per_group, P0, P1, WORDS, BN)
            k = t * TILE + kk
            xt = tl.load(x_ptr + rows_m[:, None] * stride_xm + k[None, :], mask=(rows_m[:, None] < M) & (k[None, :] < K), other=0.0)
            acc = tl.dot(xt, tl.trans(wt), acc)
        mask = (rows_m[:, None] < M) & n_mask[None, :]
        if PARTIAL:
            tl.store(out_ptr + split * M * N + rows_m[:, None] * N + rows_n[None, :], acc, mask=mask)
        else:
            tl.store(out_ptr + rows_m[:, None] * N + rows_n[None, :], acc.to(tl.bfloat16), mask=mask)

    @triton.jit
    def _dequant_kernel(p0_ptr, p1_ptr, s_ptr, b_ptr, out_ptr, N, T, n_groups, tiles_per_group,
                        P0: tl.constexpr, P1: tl.constexpr, WORDS: tl.constexpr, BN: tl.constexpr):
        TILE: tl.constexpr = 32 * WORDS
        rows = tl.program_id(0) * BN + tl.arange(0, BN)
        row_mask = rows < N
        t = tl.program_id(1)
        wt = _dequant_tile(p0_ptr, p1_ptr, s_ptr, b_ptr, rows, row_mask, t, T, n_groups, tiles_per_group, P0, P1, WORDS, BN)
        k = t * TILE + tl.arange(0, TILE)
        tl.store(out_ptr + rows[:, None] * (T * TILE) + k[None, :], wt, mask=row_mask[:, None])

    @triton.jit
    def _sum_splits_kernel(part_ptr, out_ptr, total, SPLITS, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = i < total
        acc = tl.zeros([BLOCK], tl.float32)
        for s in range(0, SPLITS):
            acc += tl.load(part_ptr + s * total + i, mask=mask, other=0.0)
        tl.store(out_ptr + i, acc.to(tl.bfloat16), mask=mask)


# ---------------------------------------------------------------- launching and tuning

GEMV_MAX_TOKENS = 16
DEQUANT_MIN_TOKENS = 256  # from here on, dequantize + cuBLAS is also tried
# Programs wanted in flight (H200: 132 multiprocessors): the GEMV keeps bytes in flight with many
# light programs per multiprocessor; the GEMM needs only a few waves.
GEMV_PROGRAMS = 8 * 132
GEMM_PROGRAMS = 4 * 132
# (BN, TT, num_warps) for the GEMV; (BM, BN, num_warps, num_stages) for the GEMM
GEMV_CONFIGS = [(16, 2, 4), (16, 4, 4), (32, 2, 4), (32, 4, 8), (64, 2, 8)]
GEMM_SMALL = [(16, 64, 4, 3), (16, 128, 4, 4), (32, 64, 4, 3)]
GEMM_LARGE = [(64, 128, 4, 3), (128, 128, 8, 3), (128, 256, 8, 3)]
_tuned: dict[tuple, tuple] = {}


def token_bucket(m: int) -> int:
    return 1 << max(0, (m - 1).bit_length())


def _splits(programs: int, tiles: int, wanted: int) -> int:
    """Split K until the grid has `wanted` programs, each keeping at least 2 tiles."""
    split = 1
    while programs * split < wanted and tiles // (split * 2) >= 2:
        split *= 2
    return split


def _run(kind: str, config: tuple, x: torch.Tensor, layer: PackedLinear) -> torch.Tensor:
    layout = layer.layout
    m, n = x.shape[0], layer.out_features
    planes = layer.planes
    p0, p1 = planes[0], planes[-1]
    bits = PLANES[layout.bits]
    b0, b1 = bits[0], (bits[1] if len(bits) > 1 else 0)
    common = (layout.tiles, layout.groups, layout.tiles_per_group)
    if kind == "dequant":
        w = torch.empty(n, layout.padded_in, device=x.device, dtype=torch.bfloat16)
        bn = 32
        _dequant_kernel[(triton.cdiv(n, bn), layout.tiles)](p0, p1, layer.scale, layer.offset, w, n, *common, b0, b1, layout.words, bn, num_warps=4)
        return x @ w[:, : layer.in_features].T
    if kind == "gemv":
        bn, tt, warps = config
        grid_n = triton.cdiv(n, bn)
        split = _splits(grid_n * m, layout.tiles // tt, GEMV_PROGRAMS)
        per_split = triton.cdiv(triton.cdiv(layout.tiles, split), tt) * tt
        split = triton.cdiv(layout.tiles, per_split)
        out = torch.empty((split, m, n) if split > 1 else (m, n), device=x.device, dtype=torch.float32 if split > 1 else torch.bfloat16)
        _gemv_kernel[(grid_n, split, m)](x, p0, p1, layer.scale, layer.offset, out, n, layer.in_features, layout.tiles, per_split,
                                         layout.groups, layout.tiles_per_group, x.stride(0), b0, b1, layout.words, bn, tt,
                                         split > 1, num_warps=warps)
    else:
        bm, bn, warps, stages = config
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
        split = _splits(grid[0] * grid[1], layout.tiles, GEMM_PROGRAMS)
        per_split = triton.cdiv(layout.tiles, split)
        split = triton.cdiv(layout.tiles, per_split)
        out = torch.empty((split, m, n) if split > 1 else (m, n), device=x.device, dtype=torch.float32 if split > 1 else torch.bfloat16)
        _gemm_kernel[(*grid, split)](x, p0, p1, layer.scale, layer.offset, out, m, n, layer.in_features, layout.tiles, per_split,
                                     layout.groups, layout.tiles_per_group, x.stride(0), b0, b1, layout.words, bm, bn,
                                     split > 1, num_warps=warps, num_stages=stages)
    if split == 1:
        return out
    y = torch.empty(m, n, device=x.device, dtype=torch.bfloat16)
    _sum_splits_kernel[(triton.cdiv(m * n, 1024),)](out, y, m * n, split, 1024, num_warps=4)
    return y


def candidates(m: int) -> list[tuple[str, tuple]]:
    """Launches to time for m tokens. Up to GEMV_MAX_TOKENS, the GEMV (one program column per token,
    the weights re-read from L2) competes with the tensor-core GEMM."""
    gemv = [("gemv", c) for c in GEMV_CONFIGS]
    if m <= 4:
        return gemv
    if m < DEQUANT_MIN_TOKENS:
        return (gemv if m <= GEMV_MAX_TOKENS else []) + [("gemm", c) for c in GEMM_SMALL]
    return [("gemm", c) for c in GEMM_LARGE] + [("dequant", ())]


def _time_ms(choice: tuple[str, tuple], x: torch.Tensor, layer: PackedLinear) -> float:
    """A candidate's median time; one whose tiles do not fit the GPU's shared memory is never picked."""
    try:
        return triton.testing.do_bench(lambda: _run(*choice, x, layer), warmup=2, rep=10, return_mode="median")
    except triton.runtime.errors.OutOfResources:
        return math.inf


def matmul(x: torch.Tensor, layer: PackedLinear) -> torch.Tensor:
    """x [M, K] bf16 @ W^T with the best tuned kernel for this shape (tuned on first eager use)."""
    if triton is None:
        raise RuntimeError("the integer kernels need the triton package")
    x = x.to(torch.bfloat16).contiguous()
    key = (token_bucket(x.shape[0]), layer.out_features, layer.in_features, layer.layout)
    choice = _tuned.get(key)
    if choice is None:
        options = candidates(x.shape[0])
        if torch.cuda.is_current_stream_capturing():
            choice = options[0]  # cannot time inside a capture; callers warm up eagerly first
        else:
            choice = min(options, key=lambda c: _time_ms(c, x, layer))
            _tuned[key] = choice
    return _run(*choice, x, layer)


def tuned_choice(m: int, layer: PackedLinear) -> tuple[str, tuple] | None:
    return _tuned.get((token_bucket(m), layer.out_features, layer.in_features, layer.layout))
