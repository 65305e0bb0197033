"""2:4 sparse weights whose kept values are 2, 4 or 8-bit group-wise integers (SparseGPT 2:4 with
bits < 16: pruned and quantized in one sweep), run by our own Triton kernels. Only the kept half is
stored: at 4 bits that is 3 bits a weight (4 of code and 2 of position per kept weight), against
`intq`'s 4 for the same matrix stored dense.

Packing format (version `KERNEL_VERSION`)
-----------------------------------------
W [N out, K in] has at most 2 nonzeros in each block of 4 input columns 4i .. 4i+3; its kept values
are on a group-wise grid W[n, k] = q * s + b (s, b per row and group of `group_size` columns, float16,
float32 at 8 bits; exactly `intq`'s grid, fitted by `intq.fit_grid` on the dense matrix: a pruned 0
lies on an integer-zero grid). K is zero-padded to whole slices of 32 columns (8 blocks); a slice lies
inside one group. Each block keeps exactly two positions p0 < p1 (its nonzeros, topped up with its
lowest zero positions), so p0 is in {0, 1, 2} and p1 in {1, 2, 3}; slot 2b + r of a slice is kept
value r of block b (16 slots a slice).
  * `qweight` [N, P/2, S] int32 (P bits, S slices): word c of slice t holds the codes of slots
    c * F .. c * F + F - 1 (F = 32 / P), slot c * F + f at bits f * P .. f * P + P - 1.
  * `index` [N, S] int32: bits 2j, 2j + 1 of the word of slice t are slot j's position in its block.
Plane-major order: a warp's loads of one word index over consecutive slices are contiguous.

Kernels
-------
  * decode (M <= 16 tokens): a split-K GEMV on CUDA cores, each thread holding a few rows of the same
    slices, so that the 32 x values of a slice, loaded once, serve all of them. A kept code becomes the
    float 2^P + q through its bits (shifted to mantissa bits 23-P .. 22 and OR-ed with the exponent of
    2^P: one shift and one LOP3, as in `intq`); its x is picked from its block's four by the two
    position bits (two selects: p0 picks among x0, x1, x2 and p1 among x1, x2, x3). With
    qx = sum (2^P + q) x and xs = sum x over the kept slots, a row's group adds s (qx - 2^P xs) + b xs.
  * from 5 tokens: a tensor-core GEMM; each step makes GEMM_SLICES slices of BN rows dense in
    registers (a kept value goes to its column of the block through two selects on its position;
    the pruned columns are zeros) and multiplies them by x with tl.dot, fp32 accumulation, split-K.
  * prefill: also dequantize into a dense bf16 scratch buffer (in row chunks, as `intq` does) + cuBLAS.
Every launch for a shape and token bucket is timed at first use and the fastest is kept; split-K sums,
launch tuning, the token buckets and the GEMM configurations are `intq`'s.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from harness.kernels import intq, sparse24
from harness.kernels.intq import triton

if triton is not None:
    import triton.language as tl

    from harness.kernels.intq import _store_rows, _store_tile, _x_field

NAME = "triton-2:4-intq"
KERNEL_VERSION = "1"
SUPPORTED_BITS = (2, 4, 8)
SLICE = 32  # columns a slice: 8 blocks of 4, 16 kept slots


def unsupported_reason(bits: int, group_size: int) -> str | None:
    if bits not in SUPPORTED_BITS:
        return f"2:4 sparse + {bits}-bit weights: the 2:4 integer kernel packs {', '.join(map(str, SUPPORTED_BITS))} bits"
    return intq.unsupported_reason(bits, group_size)


def kept_positions(weight: torch.Tensor) -> torch.Tensor:
    """[N, K/4, 2] int64: each block's two kept positions, ascending (its nonzeros, then its lowest zeros)."""
    if not sparse24.is_two_four(weight):
        raise ValueError("the weight is not 2:4 sparse (more than 2 nonzeros in a block of 4 input columns)")
    blocks = weight.reshape(weight.shape[0], -1, 4)
    rank = (blocks != 0).to(torch.int64) * 4 + (3 - torch.arange(4, device=weight.device))
    return rank.topk(2, dim=-1).indices.sort(-1).values


def pack(codes: torch.Tensor, positions: torch.Tensor, bits: int, padded_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense codes [N, K] and kept positions [N, K/4, 2] -> (`qweight`, `index`) of the format above."""
    rows, blocks = positions.shape[:2]
    slots = torch.zeros(rows, padded_in // 4, 2, dtype=torch.int64, device=codes.device)
    slots[:, :blocks] = codes.to(torch.int64).reshape(rows, blocks, 4).gather(-1, positions)
    where = torch.tensor([0, 1], device=codes.device).expand(rows, padded_in // 4, 2).clone()  # padding: p = 0, 1
    where[:, :blocks] = positions
    s = padded_in // SLICE
    slots, where = slots.reshape(rows, s, 16), where.reshape(rows, s, 16)
    fields = 32 // bits
    words = (slots.reshape(rows, s, bits // 2, fields) << (torch.arange(fields, device=codes.device) * bits)).sum(-1)
    index = (where << (2 * torch.arange(16, device=codes.device))).sum(-1)
    as_int32 = lambda w: torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)  # two's complement
    return as_int32(words.transpose(1, 2).contiguous()), as_int32(index)


def unpack(qweight: torch.Tensor, index: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of pack: (kept codes [N, Kpad/4, 2], positions [N, Kpad/4, 2]), both int64."""
    rows, words, s = qweight.shape
    fields = 32 // bits
    w = qweight.to(torch.int64).transpose(1, 2) & (2**32 - 1)
    codes = (w[..., None] >> (torch.arange(fields, device=w.device) * bits)) & (2**bits - 1)
    where = ((index.to(torch.int64) & (2**32 - 1))[..., None] >> (2 * torch.arange(16, device=w.device))) & 3
    return codes.reshape(rows, s * 8, 2), where.reshape(rows, s * 8, 2)


def slicing(in_features: int, group_size: int) -> tuple[int, int, int]:
    """(padded K, slices, slices a group) of the format."""
    padded = math.ceil(in_features / SLICE) * SLICE
    return padded, padded // SLICE, padded // SLICE if group_size == -1 else group_size // SLICE


class SparsePackedLinear(nn.Module):
    """y = x W^T (+ bias) with W 2:4 sparse and quantized, only its kept half resident, packed as above."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int):
        super().__init__()
        reason = unsupported_reason(bits, group_size)
        if reason:
            raise ValueError(reason)
        weight = linear.weight.detach()
        self.out_features, self.in_features = weight.shape
        if self.in_features % 4:
            raise ValueError(f"in_features={self.in_features} is not a multiple of 4: no 2:4 blocks")
        self.layout = intq.Layout.of(bits, self.in_features, group_size)
        self.bits = bits
        self.padded_in, self.slices, self.slices_per_group = slicing(self.in_features, group_size)
        positions = kept_positions(weight)
        codes, scale, offset, _ = intq.fit_grid(weight, self.layout)
        qweight, index = pack(codes, positions, bits, self.padded_in)
        self.register_buffer("qweight", qweight)
        self.register_buffer("index", index)
        self.register_buffer("scale", scale.to(self.layout.param_dtype).contiguous())
        self.register_buffer("offset", offset.to(self.layout.param_dtype).contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.register_buffer("gemv_locks", intq.gemv_locks(self.out_features, weight.device), persistent=False)
        self.layer_id = intq.register(self)

    @property
    def groups(self) -> int:
        return self.scale.shape[1]

    def dequantized(self) -> torch.Tensor:
        """W as float32 [N, K] from the packed form (the reference the kernels are checked against)."""
        codes, where = unpack(self.qweight, self.index, self.bits)
        group = self.padded_in if self.layout.group_size == -1 else self.layout.group_size
        column = torch.arange(self.padded_in, device=codes.device).view(-1, 4)[None].expand(codes.shape[0], -1, -1)
        g = column.gather(-1, where) // group
        value = codes * self.scale.float().gather(1, g.flatten(1)).view_as(g) + self.offset.float().gather(1, g.flatten(1)).view_as(g)
        dense = torch.zeros(codes.shape[0], self.padded_in // 4, 4, device=codes.device).scatter(-1, where, value)
        return dense.view(codes.shape[0], -1)[:, : self.in_features]

    def tuning_key(self, m: int) -> tuple:
        return (intq.token_bucket(m), NAME, self.out_features, self.in_features, self.layout)

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [M, K] (CUDA) @ W^T through the Triton kernels."""
        rows = rows.to(torch.bfloat16).contiguous()
        return intq.tuned_call(self.tuning_key(rows.shape[0]), candidates(rows.shape[0]), lambda kind, config: _run(kind, config, rows, self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return intq.packed_forward(self, x)


def convert(linear: nn.Linear, compression, method_options: dict) -> tuple[SparsePackedLinear, float]:
    layer = SparsePackedLinear(linear, compression.quant.bits, compression.quant.group_size)
    weight = linear.weight.detach().float()
    return layer, ((layer.dequantized() - weight).norm() / weight.norm().clamp(min=1e-30)).item()


# ---------------------------------------------------------------- Triton kernels

if triton is not None:

    # S unspecialized: were it known divisible by 4, Triton would give each thread 4 consecutive slices
    # (16-byte word loads) of 2 rows; unknown, a thread takes 1 slice of 8 rows and each x value it loads
    # serves all 8 (SASS, 14336x4096 W4: 4.89-5.48 instructions a weight against 5.21-6.12)
    @triton.jit(do_not_specialize=["S"])
    def _gemv_kernel(x_ptr, q_ptr, i_ptr, s_ptr, b_ptr, out_ptr, part_ptr, lock_ptr, N, K, S, n_groups, stride_xm, one,
                     P: tl.constexpr, BN: tl.constexpr, TS: tl.constexpr, ITERS: tl.constexpr, EVEN: tl.constexpr,
                     MASK_K: tl.constexpr, SPG: tl.constexpr, ONE_GROUP: tl.constexpr, SPLITS: tl.constexpr):
        """y[m, rows] for BN rows over ITERS chunks of TS slices (this program's split of K).

        Every tensor is [TS slices, BN rows], x, s and b included (their pointers broadcast over the
        rows), as in `intq`'s GEMV: lanes over consecutive slices, rows over warps and repeats, so a
        thread's loads of one x value serve every row it holds (8 in the 4-warp configurations). Rows past N and slices past S read row
        N-1 and slice S-1, and their s and b are zeroed; x past K is masked when K is not whole slices.
        SPG (slices a group) is compile-time: a division by a run-time value costs a float reciprocal."""
        pid_n, split, m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        F: tl.constexpr = 32 // P  # slots a word
        HI: tl.constexpr = 23 - P  # a code at mantissa bits HI .. 22 under the exponent of 2^P reads 2^P + q
        rows = (pid_n * BN + tl.arange(0, BN))[None, :]
        rows_in = rows if EVEN else tl.minimum(rows, N - 1)
        x_row = x_ptr + m * stride_xm
        acc = tl.zeros([TS, BN], tl.float32)
        for it in range(ITERS):
            t = ((split * ITERS + it) * TS + tl.arange(0, TS))[:, None]
            t_in = t if EVEN else tl.minimum(t, S - 1)
            col0 = t_in * 32 + rows * 0  # the slice's first column, broadcast over the rows
            where = tl.load(i_ptr + rows_in * S + t_in)
            qx = tl.zeros([TS, BN], tl.float32)
            xs = tl.zeros([TS, BN], tl.float32)
            for blk in tl.static_range(8):
                x0 = _x_field(x_row, col0 + 4 * blk, 0, K, 1, MASK_K)
                x1 = _x_field(x_row, col0 + 4 * blk, 1, K, 1, MASK_K)
                x2 = _x_field(x_row, col0 + 4 * blk, 2, K, 1, MASK_K)
                x3 = _x_field(x_row, col0 + 4 * blk, 3, K, 1, MASK_K)
                for r in tl.static_range(2):
                    j = 2 * blk + r  # compile-time, as blk and r
                    word = tl.load(q_ptr + (rows_in * (P // 2) + j // F) * S + t_in)
                    shift = HI - (j % F) * P
                    shifted = word << shift if shift >= 0 else word >> -shift
                    v = ((shifted & (((1 << P) - 1) << HI)) | (one + (P << 23))).to(tl.float32, bitcast=True)
                    bit0 = (where & (1 << (2 * j))) != 0
                    if 2 * j + 1 == 31:  # the sign bit (1 << 31 is not an int32 constant)
                        bit1 = where < 0
                    else:
                        bit1 = (where & (1 << (2 * j + 1))) != 0
                    if r == 0:  # p0 in {0, 1, 2}
                        xv = tl.where(bit1, x2, tl.where(bit0, x1, x0))
                    else:  # p1 in {1, 2, 3}
                        xv = tl.where(bit1, tl.where(bit0, x3, x2), x1)
                    qx += v * xv
                    xs += xv
            gi = rows_in * n_groups + (t_in * 0 if ONE_GROUP else t_in // SPG)
            s = tl.load(s_ptr + gi).to(tl.float32)
            b = tl.load(b_ptr + gi).to(tl.float32)
            if not EVEN:  # slices past S (the last split's overrun) add nothing
                s = tl.where(t < S, s, 0.0)
                b = tl.where(t < S, b, 0.0)
            acc += s * (qx - (1 << P) * xs) + b * xs
        y = tl.sum(acc, axis=0)
        _store_rows(out_ptr, part_ptr, lock_ptr, y, pid_n, split, m, N, BN, SPLITS)

    @triton.jit
    def _dense_slices(q_ptr, i_ptr, s_ptr, b_ptr, rows, t, S, n_groups, slices_per_group,
                      P: tl.constexpr, BN: tl.constexpr, TS: tl.constexpr):
        """Slices t [TS] (each < S) of rows [BN] (each < N) as dense float32 [BN, TS * 32], zeros at
        the pruned positions: each kept value goes to its block's column through two selects."""
        F: tl.constexpr = 32 // P
        c = tl.arange(0, P // 2)
        words = tl.load(q_ptr + (rows[:, None, None] * (P // 2) + c[None, None, :]) * S + t[None, :, None])  # [BN, TS, P/2]
        codes = (words[:, :, :, None] >> (tl.arange(0, F) * P)[None, None, None, :]) & ((1 << P) - 1)
        where = tl.load(i_ptr + rows[:, None] * S + t[None, :])  # [BN, TS]
        pos = (where[:, :, None] >> (2 * tl.arange(0, 16))[None, None, :]) & 3
        g = rows[:, None] * n_groups + t[None, :] // slices_per_group
        s = tl.load(s_ptr + g).to(tl.float32)[:, :, None, None]
        b = tl.load(b_ptr + g).to(tl.float32)[:, :, None, None]
        v0, v1 = tl.split(tl.reshape(codes, [BN, TS, 8, 2]).to(tl.float32) * s + b)  # [BN, TS, 8] each
        p0, p1 = tl.split(tl.reshape(pos, [BN, TS, 8, 2]))
        j = tl.arange(0, 4)[None, None, None, :]
        dense = tl.where(p0[:, :, :, None] == j, v0[:, :, :, None], tl.where(p1[:, :, :, None] == j, v1[:, :, :, None], 0.0))
        return tl.reshape(dense, [BN, TS * 32])

    @triton.jit
    def _dequant_kernel(q_ptr, i_ptr, s_ptr, b_ptr, out_ptr, row0, N, S, n_groups, slices_per_group,
                        P: tl.constexpr, BN: tl.constexpr, TS: tl.constexpr):
        """Rows row0 .. N-1 (BN a program, TS slices) as dense bf16 into out, whose row 0 is row0."""
        rows = row0 + tl.program_id(0) * BN + tl.arange(0, BN)
        row_mask = rows < N
        t = tl.program_id(1) * TS + tl.arange(0, TS)
        dense = _dense_slices(q_ptr, i_ptr, s_ptr, b_ptr, tl.where(row_mask, rows, row0), tl.minimum(t, S - 1), S, n_groups,
                              slices_per_group, P, BN, TS)
        k = tl.program_id(1) * TS * 32 + tl.arange(0, TS * 32)
        tl.store(out_ptr + (rows - row0)[:, None] * (S * 32) + k[None, :], dense.to(tl.bfloat16),
                 mask=row_mask[:, None] & (k[None, :] < S * 32))

    @triton.jit
    def _gemm_kernel(x_ptr, q_ptr, i_ptr, s_ptr, b_ptr, out_ptr, M, N, K, S, n_groups, slices_per_group, stride_xm,
                     P: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, TS: tl.constexpr, CHUNKS: tl.constexpr,
                     PARTIAL: tl.constexpr):
        """Tensor-core GEMM: CHUNKS chunks of TS slices from split * CHUNKS (compile-time trip count),
        each made dense in registers (as the dequantize kernel does) and multiplied with tl.dot; x past
        K is masked, so slices past S (read as slice S-1) add nothing."""
        pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows_m = pid_m * BM + tl.arange(0, BM)
        rows_n = pid_n * BN + tl.arange(0, BN)
        rows_in = tl.minimum(rows_n, N - 1)
        acc = tl.zeros([BM, BN], tl.float32)
        for i in range(CHUNKS):
            chunk = split * CHUNKS + i
            t = tl.minimum(chunk * TS + tl.arange(0, TS), S - 1)
            wt = _dense_slices(q_ptr, i_ptr, s_ptr, b_ptr, rows_in, t, S, n_groups, slices_per_group, P, BN, TS).to(tl.bfloat16)
            k = chunk * TS * 32 + tl.arange(0, TS * 32)
            xt = tl.load(x_ptr + rows_m[:, None] * stride_xm + k[None, :], mask=(rows_m[:, None] < M) & (k[None, :] < K), other=0.0)
            acc = tl.dot(xt, tl.trans(wt), acc)
        _store_tile(out_ptr, acc, rows_m, rows_n, split, M, N, PARTIAL)


# ---------------------------------------------------------------- launching

# (BN, TS, num_warps): a warp spans min(TS, 32) slices and 32 / TS rows, so a thread holds
# BN * TS / (32 * num_warps) rows, each x value it loads serving all of them
GEMV_CONFIGS = [(32, 32, 4), (64, 16, 4), (32, 16, 2), (16, 8, 1)]
GEMM_SLICES = 4  # slices a GEMM step: 128 columns, intq's tile at group 128
DEQUANT_SLICES = 8  # slices a dequantize program: 256 columns, 512 contiguous bytes a row stored


def gemv_launch(config: tuple, bits: int, n: int, in_features: int, group_size: int, m: int) -> tuple[tuple, tuple, int]:
    """Grid, compile-time arguments (P, BN, TS, ITERS, EVEN, MASK_K, SPG, ONE_GROUP, SPLITS) and warps."""
    bn, ts, warps = config
    padded, slices, per_group = slicing(in_features, group_size)
    grid_n = triton.cdiv(n, bn)
    chunks = triton.cdiv(slices, ts)
    split = intq._splits(grid_n, chunks, intq.GEMV_PROGRAMS, least=1)
    iters = triton.cdiv(chunks, split)
    split = triton.cdiv(chunks, iters)
    even = n % bn == 0 and slices == split * iters * ts
    return (grid_n, split, m), (bits, bn, ts, iters, even, padded != in_features, per_group, per_group == slices, split), warps


def _run(kind: str, config: tuple, x: torch.Tensor, layer: SparsePackedLinear) -> torch.Tensor:
    m, n = x.shape[0], layer.out_features
    weights = (layer.qweight, layer.index, layer.scale, layer.offset)
    if kind == "dequant":
        def fill(dense, row0, rows):
            _dequant_kernel[(triton.cdiv(rows, 32), triton.cdiv(layer.slices, DEQUANT_SLICES))](
                *weights, dense, row0, row0 + rows, layer.slices, layer.groups, layer.slices_per_group, layer.bits, 32, DEQUANT_SLICES,
                num_warps=4)
        return intq.dequant_matmul(x, n, layer.padded_in, layer.in_features, config[0], fill)
    if kind == "gemm":
        grid, per_split, warps, stages = intq.gemm_launch(config, m, n, triton.cdiv(layer.slices, GEMM_SLICES))
        out = intq._partial_or_out(grid[2], m, n, x.device)
        _gemm_kernel[grid](x, *weights, out, m, n, layer.in_features, layer.slices, layer.groups, layer.slices_per_group, x.stride(0),
                           layer.bits, config[0], config[1], GEMM_SLICES, per_split, grid[2] > 1, num_warps=warps, num_stages=stages)
        return intq.sum_splits(out, grid[2], m, n)
    grid, meta, warps = gemv_launch(config, layer.bits, n, layer.in_features, layer.layout.group_size, m)
    out, part = intq.gemv_outputs(grid, n, x.device)
    _gemv_kernel[grid](x, *weights, out, part, layer.gemv_locks, n, layer.in_features, layer.slices, layer.groups, x.stride(0),
                       intq.MANTISSA_ONE, *meta, num_warps=warps)
    return out


def candidates(m: int) -> list[tuple[str, tuple]]:
    """intq's choice of launches, with this backend's GEMV configurations."""
    return intq.candidates(m, GEMV_CONFIGS)
