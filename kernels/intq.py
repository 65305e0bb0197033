"""Packed 2/3/4/8-bit group-wise integer weights, run by our own Triton kernels (weight-only: the
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
tile). Inside a tile, column j * WORDS + w (j < 32, w < WORDS) is "field column" j of "lane" w.

One int32 tensor `qweight` [N, bits, T tiles, WORDS] holds everything: `bits` words per (row, tile,
lane), so exactly `bits` bits a weight, one pass for every width. Word (n, c, t, w) holds, at bit
position pos, `width` bits of the code of column t * TILE + j * WORDS + w, for the pieces (c, pos, j):
  * 2, 4, 8 bits (F = 32 / bits fields a word): field f of word c, bits f*bits .. +bits-1, is the
    whole code of field column j = c * F + f.
  * 3 bits: words c = 0, 1, 2 hold 10 fields each, field f at bits 3f .. 3f+2 the whole code of
    field column j = 10c + f; the two spare bits 30-31 carry columns 30 and 31: bits 30-31 of word 0
    are bits 0-1 of column 30's code, bits 30-31 of word 1 bits 0-1 of column 31's, bit 30 of word 2
    is bit 2 of column 30's code and bit 31 of word 2 bit 2 of column 31's.
The plane-major order [bits, T, WORDS] makes a warp's loads of one word index c over consecutive
tiles one contiguous stretch (16 bytes a thread). `PIECES[bits]` lists the pieces; `pack_codes` and
`unpack_codes` are its exact inverse pair.

Decoding without integer-to-float conversions (the GEMV): a word is shifted so that a few of its
fields sit at mantissa bits 23-bits-d .. 22-d of a float32 (d < 11), one field is masked out and OR-ed
with the exponent of 2^e, e = bits + d, in one LOP3: that float is exactly 2^e + q. So
sum_k (q s + b) x = s * (sum_k (2^e_k + q_k) x_k - sum_k 2^e_k x_k) + b * sum_k x_k: per weight one
LOP3 and one FFMA (plus a shift per few fields); the x sums are shared by all rows a thread holds.
The rounding of 2^e x (e <= 18 at 8 bits) costs at most 2^(d-23) of a weight's own magnitude, far
under bf16's 2^-9.

Kernels
-------
  * decode (M <= 16 tokens): a split-K GEMV on CUDA cores with the decoding above; each thread holds
    several rows, each x value it loads serves all of them, and per tile it applies s and b once.
  * small batches (from 5 tokens) and prefill: a tiled GEMM; each tile is unpacked, dequantized to bf16 in registers
    and multiplied on tensor cores (tl.dot), fp32 accumulation, split-K when the grid is small.
  * large batches: dequantize the layer to a bf16 scratch buffer, then torch.matmul (cuBLAS); for
    each shape the faster of this and the fused GEMM is picked by timing both at first use. The
    dequantize kernel turns codes into floats as (q | bits of 2^23) - 2^23, the GEMM with I2F (the
    fewer instructions in each; SASS counts in benchmarks/NOTES.md, benchmarks/kernel_sass.py).
Split-K partial sums go to an fp32 buffer and one small kernel adds them and writes bf16.
Launch configurations are tuned per (shape, bits, token bucket) by timing a small candidate set at
the first eager call (never during CUDA-graph capture) and cached for the process.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn

try:  # the packing format is pure torch (testable anywhere); the kernels need Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CI installs triton; a bare CPU machine may not have it
    triton = None

NAME = "triton-intq"
KERNEL_VERSION = "4"
SUPPORTED_BITS = (2, 3, 4, 8)
REFITS = 2


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
    if bits not in SUPPORTED_BITS:
        return f"{bits}-bit weights: the integer kernels pack {', '.join(map(str, SUPPORTED_BITS))} bits"
    if group_size != -1 and group_size % 32:
        return f"group_size={group_size}: the integer kernels need a multiple of 32 (or -1, per channel)"
    return None


# ---------------------------------------------------------------- packing (pure torch, exact)


def _pieces(bits: int) -> list[tuple[int, int, int, int, int]]:
    """(word c, bit position, field column j, code bit offset, width) of each piece of the format."""
    if bits == 3:
        whole = [(c, 3 * f, 10 * c + f, 0, 3) for c in range(3) for f in range(10)]
        return whole + [(0, 30, 30, 0, 2), (1, 30, 31, 0, 2), (2, 30, 30, 2, 1), (2, 31, 31, 2, 1)]
    fields = 32 // bits
    return [(c, f * bits, c * fields + f, 0, bits) for c in range(bits) for f in range(fields)]


PIECES = {bits: _pieces(bits) for bits in SUPPORTED_BITS}


def pack_codes(codes: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Integer codes [N, K] -> `qweight` [N, bits, T, WORDS] int32 of the format above."""
    rows = codes.shape[0]
    q = torch.zeros(rows, layout.padded_in, dtype=torch.int64, device=codes.device)
    q[:, : codes.shape[1]] = codes.to(torch.int64)
    q = q.view(rows, layout.tiles, 32, layout.words)
    word = torch.zeros(rows, layout.bits, layout.tiles, layout.words, dtype=torch.int64, device=codes.device)
    for c, pos, j, offset, width in PIECES[layout.bits]:
        word[:, c] |= ((q[:, :, j] >> offset) & (2**width - 1)) << pos
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)  # two's complement


def unpack_codes(qweight: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The inverse of pack_codes: [N, K] int64 codes."""
    rows = qweight.shape[0]
    word = qweight.to(torch.int64) & (2**32 - 1)
    q = torch.zeros(rows, layout.tiles, 32, layout.words, dtype=torch.int64, device=qweight.device)
    for c, pos, j, offset, width in PIECES[layout.bits]:
        q[:, :, j] |= ((word[:, c] >> pos) & (2**width - 1)) << offset
    return q.view(rows, layout.padded_in)[:, : layout.in_features]


def fit_grid(weight: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Recover (codes, scale, offset) of an already group-quantized weight, W ~ q * s + b per group.

    The compressed model holds dequantized values s * (q - z) (rounded to its dtype). Two estimates of
    each group's step are tried: the min/max range over 2^bits - 1 (exact for round-to-nearest) and the
    smallest gap between distinct values (exact when a group does not reach both ends of its grid, as
    after GPTQ); codes and a least-squares s and b are refitted alternately, and each group keeps the
    estimate with the smaller max error. Also returns ||W - (q s + b)|| / ||W||: about 1e-3 when W is
    on such a grid (bf16 rounding of the stored values), a few 1e-2 and more when it is not (weights
    that were never quantized, or scaled per column after quantization)."""
    maxq = 2**layout.bits - 1
    w = weight.float().reshape(weight.shape[0], -1, layout.group_len if layout.group_size != -1 else weight.shape[1])
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    spread = (hi - lo).clamp(min=torch.finfo(torch.float32).tiny)
    by_range = spread / maxq
    values = w.sort(-1).values
    gaps = values.diff(dim=-1)
    noise = 2 ** -7 * values.abs().amax(-1, keepdim=True)  # bf16 rounding of the stored values
    by_gap = torch.where(gaps > noise, gaps, torch.inf).amin(-1, keepdim=True)
    by_gap = torch.where(torch.isfinite(by_gap) & (spread / by_gap <= maxq + 0.5), by_gap, by_range)
    best = None
    for step in (by_range, by_gap):
        q = torch.round((w - lo) / step).clamp(0, maxq)
        for _ in range(REFITS):  # codes and (s, b) alternately: fixes codes an imprecise first step put one off
            scale, offset = _least_squares(w, q)
            q = torch.round((w - offset) / scale).clamp(0, maxq)
        scale, offset = _least_squares(w, q)
        scale, offset = scale.to(layout.param_dtype).float(), offset.to(layout.param_dtype).float()
        residual = (w - (q * scale + offset)).abs().amax(-1, keepdim=True)
        if best is None:
            best = [q, scale, offset, residual]
        else:
            better = residual < best[3]
            best = [torch.where(better, new, old) for new, old in zip((q, scale, offset, residual), best)]
    q, scale, offset, _ = best
    error = ((w - (q * scale + offset)).norm() / w.norm().clamp(min=torch.finfo(torch.float32).tiny)).item()
    return q.reshape(weight.shape).to(torch.int64), scale.squeeze(-1), offset.squeeze(-1), error


def _least_squares(w: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, the s, b minimizing ||w - (q s + b)||^2 (a group with one code: s = 1, b = mean)."""
    qm, wm = q.mean(-1, keepdim=True), w.mean(-1, keepdim=True)
    var = ((q - qm) ** 2).sum(-1, keepdim=True)
    cov = ((q - qm) * (w - wm)).sum(-1, keepdim=True)
    scale = torch.where(var > 0, cov / var.clamp(min=1e-30), torch.ones_like(var))
    return scale, wm - scale * qm


class PackedLinear(nn.Module):
    """y = x W^T (+ bias) with W packed as above; weights resident only in packed form."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, layout: Layout, bias=None):
        super().__init__()
        self.layout = layout
        self.out_features, self.in_features = codes.shape
        self.register_buffer("qweight", pack_codes(codes, layout))
        pad = layout.groups - scale.shape[1]  # per channel with a padded K keeps one group
        self.register_buffer("scale", nn.functional.pad(scale, (0, pad)).to(layout.param_dtype).contiguous())
        self.register_buffer("offset", nn.functional.pad(offset, (0, pad)).to(layout.param_dtype).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("gemv_locks", gemv_locks(self.out_features, codes.device), persistent=False)
        self.layer_id = register(self)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int) -> tuple["PackedLinear", float]:
        """Pack a compressed nn.Linear; also returns fit_grid's relative weight error."""
        layout = Layout.of(bits, linear.in_features, group_size)
        codes, scale, offset, error = fit_grid(linear.weight.detach(), layout)
        return cls(codes, scale, offset, layout, linear.bias), error

    def dequantized(self) -> torch.Tensor:
        """W as float32 [N, K] from the packed form (the reference the kernels are checked against)."""
        layout = self.layout
        q = unpack_codes(self.qweight, layout).float()
        g = layout.group_len if layout.group_size != -1 else self.in_features
        expand = lambda t: t[:, : math.ceil(self.in_features / g)].float().repeat_interleave(g, 1)[:, : self.in_features]
        return q * expand(self.scale) + expand(self.offset)

    def tuning_key(self, m: int) -> tuple:
        return (token_bucket(m), self.out_features, self.in_features, self.layout)

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [M, K] (CUDA) @ W^T through the Triton kernels."""
        return matmul(rows, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_forward(self, x)


# ---------------------------------------------------------------- one opaque operator for torch.compile

# Packed layers by id, for the operator below (weak: a dropped model frees its weights)
_LAYERS: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()


def register(layer: nn.Module) -> int:
    _LAYERS[id(layer)] = layer
    return id(layer)


@torch.library.custom_op("harness::packed_product", mutates_args=())
def packed_product(rows: torch.Tensor, layer_id: int) -> torch.Tensor:
    """A packed layer's product (its `product`) as one operator that torch.compile does not trace
    into: it fuses the operations around the layer and leaves the Triton launch and its tuning to the
    layer. Shared by the Triton backends; on the CPU it is the same function through torch, for tests
    only (never timed)."""
    layer = _LAYERS[layer_id]
    if rows.device.type != "cuda":
        return rows @ layer.dequantized().to(rows.dtype).T
    return layer.product(rows)


@packed_product.register_fake
def _(rows: torch.Tensor, layer_id: int) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], _LAYERS[layer_id].out_features, dtype=torch.bfloat16 if rows.is_cuda else rows.dtype)


def packed_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A packed layer's forward: x [..., K] -> [..., N] through the operator, plus the bias."""
    y = packed_product(x.reshape(-1, layer.in_features), layer.layer_id).view(*x.shape[:-1], layer.out_features)
    return y if layer.bias is None else y + layer.bias


def convert(linear: nn.Linear, compression, method_options: dict) -> tuple[PackedLinear, float]:
    return PackedLinear.from_linear(linear, compression.quant.bits, compression.quant.group_size)


def concatenate(layers: list[PackedLinear]) -> PackedLinear | None:
    """One layer (no bias) computing `layers` side by side, their rows stacked; None where their
    layouts differ. Rows are packed independently, so it holds exactly their codes, scales and offsets."""
    layout = layers[0].layout
    if any(layer.layout != layout for layer in layers):
        return None
    stacked = lambda name: torch.cat([getattr(layer, name) for layer in layers])
    codes = torch.cat([unpack_codes(layer.qweight, layout) for layer in layers])
    return PackedLinear(codes, stacked("scale"), stacked("offset"), layout)


# ---------------------------------------------------------------- Triton kernels

if triton is not None:

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, part_ptr, lock_ptr, N, K, T, n_groups, tiles_per_group, stride_xm, one,
                     P: tl.constexpr, WORDS: tl.constexpr, BN: tl.constexpr, TT: tl.constexpr,
                     ITERS: tl.constexpr, EVEN: tl.constexpr, MASK_K: tl.constexpr, ONE_GROUP: tl.constexpr,
                     SPLITS: tl.constexpr):
        """y[m, rows] for BN rows over ITERS chunks of TT tiles (this program's split of K).

        Every tensor is [TT tiles, BN rows, WORDS lanes], x, s and b included (their pointers broadcast
        over the rows or lanes): one shape, so Triton gives every load the same layout (a warp's lanes
        over consecutive tiles, 16 contiguous bytes a thread; warps and repeats over rows) and no
        layout conversion goes through shared memory. A thread then holds the same tiles for several
        rows, and its loads and sums of an x value serve all of them (the repeated loads of one address
        are merged by the compiler; so no load is masked, which would stop that: rows past N and tiles
        past T read row N-1 and tile T-1 and their s and b are zeroed; only x past K is masked, when K
        is not a whole number of tiles, MASK_K). `one` is 127 << 23 (the exponent of 1.0), a run-time value so that
        masking a field and OR-ing in an exponent stays one LOP3 (two immediates would take two)."""
        pid_n, split, m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        TILE: tl.constexpr = 32 * WORDS
        rows = (pid_n * BN + tl.arange(0, BN))[None, :, None]
        rows_in = rows if EVEN else tl.minimum(rows, N - 1)
        lane = tl.arange(0, WORDS)[None, None, :]
        x_row = x_ptr + m * stride_xm
        acc = tl.zeros([TT, BN, WORDS], tl.float32)
        for i in range(ITERS):
            t = ((split * ITERS + i) * TT + tl.arange(0, TT))[:, None, None]
            t_in = t if EVEN else tl.minimum(t, T - 1)
            w_off = rows_in * (P * T * WORDS) + t_in * WORDS + lane
            k0 = t_in * TILE + lane + rows * 0  # column of field column 0, broadcast over the rows
            qx = tl.zeros([TT, BN, WORDS], tl.float32)  # sum of (2^e + q) x
            ys = tl.zeros([TT, BN, WORDS], tl.float32)  # sum of 2^e x (the same in every row)
            xs = tl.zeros([TT, BN, WORDS], tl.float32)  # sum of x (the same in every row)
            for c in tl.static_range(P):
                word = tl.load(w_ptr + w_off + c * T * WORDS)
                qx, ys, xs = _word_sums(word, x_row, k0, c, qx, ys, xs, K, one, P, WORDS, MASK_K)
            gi = rows_in * n_groups + (t_in * 0 if ONE_GROUP else t_in // tiles_per_group) + lane * 0  # per channel: no division
            s = tl.load(s_ptr + gi).to(tl.float32)
            b = tl.load(b_ptr + gi).to(tl.float32)
            if not EVEN:  # tiles past T (the last split's overrun) add nothing
                s = tl.where(t < T, s, 0.0)
                b = tl.where(t < T, b, 0.0)
            acc += s * (qx - ys) + b * xs
        y = tl.sum(tl.sum(acc, axis=2), axis=0)
        _store_rows(out_ptr, part_ptr, lock_ptr, y, pid_n, split, m, N, BN, SPLITS)

    @triton.jit
    def _word_sums(word, x_row, k0, c, qx, ys, xs, K, one, P: tl.constexpr, WORDS: tl.constexpr, MASK_K: tl.constexpr):
        """qx, ys, xs (see _gemv_kernel) plus word c's fields times their x values (c compile-time: every
        word is unrolled. A run-time loop over the words, tried on 2026-12-02, keeps a copy of ys and xs
        a row, which the unrolled code shares: 4.6 instructions a weight against 2.9-3.2 in SASS, W4)."""
        F: tl.constexpr = 10 if P == 3 else 32 // P  # whole fields a word
        SLOTS: tl.constexpr = 11 if P == 3 else F  # 3 bits: slot 10 is the spare bits 30-31
        G: tl.constexpr = 10 // P + 1  # fields one shift can bring to usable positions (d = 0, P, .. <= 10)
        HI: tl.constexpr = 23 - P  # a field at mantissa bits HI .. 22 has d = 0
        LO_F: tl.constexpr = (HI - 10 + P - 1) // P  # fields LO_F .. HI_F-1 are usable where they are
        HI_F: tl.constexpr = HI // P + 1
        for f in tl.static_range(SLOTS):
            # fields LO_F .. HI_F-1 stay where they are; the others go in runs of G, counted away
            # from those, each run shifted so that its field nearest them lands at HI (below) or
            # its farthest at HI (above); equal shifts of one word are computed once (the
            # compiler merges them)
            below = LO_F - 1 - (LO_F - 1 - f) // G * G
            above = HI_F + (f - HI_F) // G * G + G - 1
            top = below if f < LO_F else (above if above < SLOTS else SLOTS - 1)
            shift = 0 if (f >= LO_F) & (f < HI_F) else HI - top * P
            shifted = word << shift if shift >= 0 else word >> -shift
            if f < F:
                pos = f * P + shift
                xv = _x_field(x_row, k0, c * F + f, K, WORDS, MASK_K)
                v = ((shifted & (((1 << P) - 1) << pos)) | (one + ((23 - pos) << 23))).to(tl.float32, bitcast=True)
                qx += v * xv
                ys += xv * (1 << (23 - pos))
                xs += xv
            elif f < SLOTS:  # 3 bits, the spare bits 30-31, now at 20-21
                if c < 2:  # bits 0-1 of column 30 (word 0) or 31 (word 1): 8 + q mod 4
                    xv = _x_field(x_row, k0, 30 + c, K, WORDS, MASK_K)
                    v = ((shifted & (3 << 20)) | (one + (3 << 23))).to(tl.float32, bitcast=True)
                    qx += v * xv
                    ys += xv * 8
                    xs += xv
                else:  # bit 2 of columns 30 and 31 (word 2): 32 + 4 hi and 16 + 4 hi
                    x30 = _x_field(x_row, k0, 30, K, WORDS, MASK_K)
                    x31 = _x_field(x_row, k0, 31, K, WORDS, MASK_K)
                    hi30 = ((shifted & (1 << 20)) | (one + (5 << 23))).to(tl.float32, bitcast=True)
                    hi31 = ((shifted & (1 << 21)) | (one + (4 << 23))).to(tl.float32, bitcast=True)
                    qx += hi30 * x30 + hi31 * x31
                    ys += x30 * 32 + x31 * 16
        return qx, ys, xs

    @triton.jit
    def _store_rows(out_ptr, part_ptr, lock_ptr, y, pid_n, split, m, N, BN: tl.constexpr, SPLITS: tl.constexpr):
        """A GEMV program's BN outputs of token m, as bf16. With K split over SPLITS programs, each stores
        its float32 partial and counts itself in its (token, row block)'s lock; the last to arrive adds
        the partials in split order (so the result does not depend on who finishes first), writes the
        bf16 rows and resets the lock for the next launch: no second kernel launch for the sum.
        Ordering: the barrier puts every thread's partial before the count's release (one thread does
        the atomic, acq_rel at GPU scope); the last program's loads come after its acquire and bypass L1."""
        rows = pid_n * BN + tl.arange(0, BN)
        if SPLITS == 1:
            tl.store(out_ptr + m * N + rows, y.to(tl.bfloat16), mask=rows < N)
        else:
            tokens = tl.num_programs(2)
            tl.store(part_ptr + (split * tokens + m) * N + rows, y, mask=rows < N)
            tl.debug_barrier()
            lock = lock_ptr + m * tl.num_programs(0) + pid_n
            if tl.atomic_add(lock, 1, sem="acq_rel") == SPLITS - 1:
                total = tl.zeros([BN], tl.float32)
                for s in range(SPLITS):
                    total += tl.load(part_ptr + (s * tokens + m) * N + rows, mask=rows < N, other=0.0, cache_modifier=".cg")
                tl.store(out_ptr + m * N + rows, total.to(tl.bfloat16), mask=rows < N)
                tl.atomic_xchg(lock, 0)

    @triton.jit
    def _x_field(x_row, k0, j, K, WORDS: tl.constexpr, MASK_K: tl.constexpr):
        """x at field column j of the tiles of k0, as float32 (0 past K)."""
        if MASK_K:
            return tl.load(x_row + k0 + j * WORDS, mask=k0 + j * WORDS < K, other=0.0).to(tl.float32)
        return tl.load(x_row + k0 + j * WORDS).to(tl.float32)

    @triton.jit
    def _tile_codes(w_ptr, rows, row_mask, t, T, P: tl.constexpr, WORDS: tl.constexpr, BN: tl.constexpr):
        """Tile t as [BN, TILE] codes in column order (field column j, then lane)."""
        lane = tl.arange(0, WORDS)
        if P == 3:
            base = w_ptr + rows[:, None] * (3 * T * WORDS) + t * WORDS + lane[None, :]
            w0 = tl.load(base, mask=row_mask[:, None], other=0)[:, None, :]
            w1 = tl.load(base + T * WORDS, mask=row_mask[:, None], other=0)[:, None, :]
            w2 = tl.load(base + 2 * T * WORDS, mask=row_mask[:, None], other=0)[:, None, :]
            j = tl.arange(0, 32)[None, :, None]  # index arithmetic below is per register, not per tile
            whole = j < 30
            c = tl.where(whole, j // 10, j - 30)  # the word with bits 0-1 (all three bits for j < 30)
            low = (tl.where(c == 0, w0, tl.where(c == 1, w1, w2)) >> tl.where(whole, (j % 10) * 3, 30)) & tl.where(whole, 7, 3)
            # bit 2 of columns 30, 31: bits 30, 31 of word 2. The shift stays in 0 .. 31 for every j: a
            # shift by a negative amount is poison in LLVM, and masking the result with 0 does not undo
            # it (on the GPU it turned columns into garbage and NaN; the interpreter hid it)
            q = low | ((w2 >> tl.where(whole, 0, j - 2)) & tl.where(whole, 0, 4))
        else:
            F: tl.constexpr = 32 // P
            c = tl.arange(0, P)
            f = tl.arange(0, F)
            off = rows[:, None, None] * (P * T * WORDS) + c[None, :, None] * (T * WORDS) + t * WORDS + lane[None, None, :]
            words = tl.load(w_ptr + off, mask=row_mask[:, None, None], other=0)
            q = (words[:, :, None, :] >> (f * P)[None, None, :, None]) & ((1 << P) - 1)
        return tl.reshape(q, [BN, 32 * WORDS])

    @triton.jit
    def _dequant_tile(w_ptr, s_ptr, b_ptr, rows, row_mask, t, T, n_groups, tiles_per_group, magic,
                      P: tl.constexpr, WORDS: tl.constexpr, BN: tl.constexpr, MAGIC: tl.constexpr):
        """Tile t as bf16 weights [BN, TILE]. With MAGIC, codes become floats as (q | magic) - 2^23,
        magic = 2^23's bits as a run-time value: in the dequantize kernel the OR merges into the mask's
        LOP3, so a full-rate FADD replaces a quarter-rate I2F; in the GEMM it does not merge (SASS: one
        more instruction a weight than I2F), so the GEMM converts with I2F."""
        q = _tile_codes(w_ptr, rows, row_mask, t, T, P, WORDS, BN)
        # s and b loaded at the tile's full shape, unmasked (rows outside read row 0, tiles past T tile
        # T-1; nothing of theirs is stored), so the compiler merges each thread's loads of one row:
        # loaded as [BN] and broadcast, they were converted to float32 once per weight (2 HADD2.F32)
        g = tl.where(row_mask, rows, 0) * n_groups + tl.minimum(t, T - 1) // tiles_per_group
        g = g[:, None] + tl.arange(0, 32 * WORDS)[None, :] * 0
        s = tl.load(s_ptr + g).to(tl.float32)
        b = tl.load(b_ptr + g).to(tl.float32)
        if MAGIC:
            qf = (q | magic).to(tl.float32, bitcast=True) - 8388608.0
        else:
            qf = q.to(tl.float32)
        return (qf * s + b).to(tl.bfloat16)

    @triton.jit
    def _gemm_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, M, N, K, T, n_groups, tiles_per_group, stride_xm, magic,
                     P: tl.constexpr, WORDS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     TILES: tl.constexpr, PARTIAL: tl.constexpr):
        """TILES tiles from split * TILES (a compile-time trip count: Triton 3.6's interpreter cannot
        loop to a run-time bound); tiles past T are masked."""
        pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        TILE: tl.constexpr = 32 * WORDS
        rows_m = pid_m * BM + tl.arange(0, BM)
        rows_n = pid_n * BN + tl.arange(0, BN)
        n_mask = rows_n < N
        kk = tl.arange(0, TILE)
        acc = tl.zeros([BM, BN], tl.float32)
        for i in range(TILES):
            t = split * TILES + i
            live = n_mask & (rows_n * 0 + t < T)
            wt = _dequant_tile(w_ptr, s_ptr, b_ptr, rows_n, live, t, T, n_groups, tiles_per_group, magic, P, WORDS, BN, False)
            k = t * TILE + kk
            xt = tl.load(x_ptr + rows_m[:, None] * stride_xm + k[None, :], mask=(rows_m[:, None] < M) & (k[None, :] < K), other=0.0)
            acc = tl.dot(xt, tl.trans(wt), acc)
        _store_tile(out_ptr, acc, rows_m, rows_n, split, M, N, PARTIAL)

    @triton.jit
    def _store_tile(out_ptr, acc, rows_m, rows_n, split, M, N, PARTIAL: tl.constexpr):
        """A GEMM program's [BM, BN] outputs: float32 partials of its split, or the bf16 result."""
        mask = (rows_m[:, None] < M) & (rows_n[None, :] < N)
        if PARTIAL:
            tl.store(out_ptr + split * M * N + rows_m[:, None] * N + rows_n[None, :], acc, mask=mask)
        else:
            tl.store(out_ptr + rows_m[:, None] * N + rows_n[None, :], acc.to(tl.bfloat16), mask=mask)

    @triton.jit
    def _dequant_kernel(w_ptr, s_ptr, b_ptr, out_ptr, row0, N, T, n_groups, tiles_per_group, magic,
                        P: tl.constexpr, WORDS: tl.constexpr, BN: tl.constexpr):
        """Rows row0 .. N-1 (BN a program, one tile) as bf16 into out, whose row 0 is row0."""
        TILE: tl.constexpr = 32 * WORDS
        rows = row0 + tl.program_id(0) * BN + tl.arange(0, BN)
        row_mask = rows < N
        t = tl.program_id(1)
        wt = _dequant_tile(w_ptr, s_ptr, b_ptr, rows, row_mask, t, T, n_groups, tiles_per_group, magic, P, WORDS, BN, True)
        k = t * TILE + tl.arange(0, TILE)
        tl.store(out_ptr + (rows - row0)[:, None] * (T * TILE) + k[None, :], wt, mask=row_mask[:, None])

    @triton.jit
    def _sum_splits_kernel(part_ptr, out_ptr, total, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = i < total
        acc = tl.zeros([BLOCK], tl.float32)
        for s in range(0, SPLITS):
            acc += tl.load(part_ptr + s * total + i, mask=mask, other=0.0)
        tl.store(out_ptr + i, acc.to(tl.bfloat16), mask=mask)


# ---------------------------------------------------------------- launching and tuning

GEMV_MAX_TOKENS = 16
GEMV_MIN_ROWS = 8  # the smallest BN a GEMV configuration may have (sizes the split-K locks)
DEQUANT_MIN_TOKENS = 256  # from here on, dequantize + cuBLAS is also tried
MULTIPROCESSORS = 132  # H200
# Programs wanted in flight: the GEMV keeps bytes in flight with many light programs a multiprocessor
GEMV_PROGRAMS = 8 * MULTIPROCESSORS
# (BN, TT, num_warps) for the GEMV: a warp spans min(TT, 32) tiles and 32 / TT rows, so a thread holds
# BN * TT / (32 * num_warps) rows (8; 16 in (64, 32, 4): 255 registers, no spills, 9% fewer instructions
# a weight; 4 in (16, 8, 1), one warp over 8 tiles; 4 in (8, 32, 2), the fastest at 1024x4096 on an
# H100, 2026-12-02, where fewer rows a thread were slower at the large shapes), each x value it loads
# serving all of them. Every configuration compiles to a large unrolled kernel (1.5-3 s each on a CPU),
# so the set stays small;
# (BM, BN, num_warps, num_stages, programs wanted a multiprocessor) for the GEMM: K is split until the
# grid has that many programs. A few tokens read as many weight bytes as one, so they need a GEMV's
# bytes in flight (8-16 programs a multiprocessor: 55 us at 14336x4096 W4 M=16 with 4, H200, 2026-12-02);
# prefill needs only a few waves.
# ("dequant", (MiB,)): dequantize + cuBLAS in row chunks of about MiB of bf16 (0: the whole layer at once),
# so that cuBLAS reads each chunk while it is still in L2 (50 MB)
GEMV_CONFIGS = [(32, 32, 4), (64, 16, 4), (32, 16, 2), (64, 32, 4), (16, 8, 1), (8, 32, 2)]
GEMM_SMALL = [(16, 64, 4, 3, 8), (16, 64, 4, 3, 16), (16, 128, 4, 4, 8), (32, 64, 4, 3, 8)]
GEMM_LARGE = [(64, 128, 4, 3, 4), (128, 128, 8, 3, 4), (128, 256, 8, 3, 4)]
DEQUANT_CHUNKS = [(0,), (8,), (24,)]
_tuned: dict[tuple, tuple] = {}
TUNING_ROUNDS = 2
MANTISSA_ONE = 127 << 23  # float32 exponent bits of 1.0
FLOAT_2_23 = 150 << 23  # float32 bits of 2^23: (q | FLOAT_2_23) as a float is 2^23 + q


def token_bucket(m: int) -> int:
    return 1 << max(0, (m - 1).bit_length())


def _splits(programs: int, chunks: int, wanted: int, least: int = 2) -> int:
    """Split K until the grid has `wanted` programs, each keeping at least `least` chunks of K."""
    split = 1
    while programs * split < wanted and chunks // (split * 2) >= least:
        split *= 2
    return split


def _partial_or_out(split: int, m: int, n: int, device) -> torch.Tensor:
    shape, dtype = ((split, m, n), torch.float32) if split > 1 else ((m, n), torch.bfloat16)
    return torch.empty(shape, device=device, dtype=dtype)


def gemv_locks(n: int, device) -> torch.Tensor:
    """A layer of n rows' arrival counters for the split-K GEMV, one per (token, row block), zero
    between launches (each launch's last programs reset theirs)."""
    return torch.zeros(GEMV_MAX_TOKENS * math.ceil(n / GEMV_MIN_ROWS), dtype=torch.int32, device=device)


def gemv_outputs(grid: tuple, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The GEMV's bf16 output [m, n] and, with K split (grid[1] > 1), its float32 partials [split, m, n]."""
    grid_n, split, m = grid
    assert m <= GEMV_MAX_TOKENS and grid_n <= math.ceil(n / GEMV_MIN_ROWS), (grid, n)  # the locks' extent
    out = torch.empty(m, n, device=device, dtype=torch.bfloat16)
    return out, (torch.empty(split, m, n, device=device, dtype=torch.float32) if split > 1 else out)


def gemv_launch(config: tuple, layout: Layout, n: int, m: int) -> tuple[tuple, tuple, int]:
    """The GEMV's grid, compile-time arguments (P, WORDS, BN, TT, ITERS, EVEN, MASK_K, ONE_GROUP, SPLITS) and warps for
    config (BN, TT, num_warps) on an [n, layout.in_features] layer and m tokens."""
    bn, tt, warps = config
    grid_n = triton.cdiv(n, bn)
    chunks = triton.cdiv(layout.tiles, tt)
    # split from the row blocks alone, not the tokens: the compile-time ITERS (and so the compiled
    # kernel) is then one for every token count of a shape
    split = _splits(grid_n, chunks, GEMV_PROGRAMS, least=1)
    iters = triton.cdiv(chunks, split)
    split = triton.cdiv(chunks, iters)
    even = n % bn == 0 and layout.tiles == split * iters * tt
    mask_k = layout.padded_in != layout.in_features
    return (grid_n, split, m), (layout.bits, layout.words, bn, tt, iters, even, mask_k, layout.groups == 1, split), warps


def _run(kind: str, config: tuple, x: torch.Tensor, layer: PackedLinear) -> torch.Tensor:
    layout = layer.layout
    m, n = x.shape[0], layer.out_features
    w, bits, words = layer.qweight, layout.bits, layout.words
    common = (layout.tiles, layout.groups, layout.tiles_per_group)
    if kind == "dequant":
        def fill(dense, row0, rows):
            _dequant_kernel[(triton.cdiv(rows, 32), layout.tiles)](w, layer.scale, layer.offset, dense, row0, row0 + rows, *common,
                                                                   FLOAT_2_23, bits, words, 32, num_warps=4)
        return dequant_matmul(x, n, layout.padded_in, layer.in_features, config[0], fill)
    if kind == "gemv":
        grid, meta, warps = gemv_launch(config, layout, n, m)
        out, part = gemv_outputs(grid, n, x.device)
        _gemv_kernel[grid](x, w, layer.scale, layer.offset, out, part, layer.gemv_locks, n, layer.in_features, *common,
                           x.stride(0), MANTISSA_ONE, *meta, num_warps=warps)
        return out
    else:
        grid, per_split, warps, stages = gemm_launch(config, m, n, layout.tiles)
        split = grid[2]
        out = _partial_or_out(split, m, n, x.device)
        _gemm_kernel[grid](x, w, layer.scale, layer.offset, out, m, n, layer.in_features, *common, x.stride(0), FLOAT_2_23,
                           bits, words, config[0], config[1], per_split, split > 1, num_warps=warps, num_stages=stages)
    return sum_splits(out, split, m, n)


def gemm_launch(config: tuple, m: int, n: int, chunks: int) -> tuple[tuple, int, int, int]:
    """A GEMM's grid (row blocks of x, of W, splits of K), chunks of K a split, warps and stages."""
    bm, bn, warps, stages, per_sm = config
    blocks = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    per_split = triton.cdiv(chunks, _splits(blocks, chunks, per_sm * MULTIPROCESSORS))
    return (triton.cdiv(m, bm), triton.cdiv(n, bn), triton.cdiv(chunks, per_split)), per_split, warps, stages


def dequant_matmul(x: torch.Tensor, n: int, padded_in: int, in_features: int, chunk_mib: int, fill) -> torch.Tensor:
    """x @ W^T through a bf16 scratch copy of W made by fill(dense, row0, rows) (rows row0 .. row0+rows-1
    into dense's first rows), in row chunks of about chunk_mib MiB (0: one chunk), each multiplied by
    cuBLAS straight into its columns of the output while it is still in L2."""
    chunk = n if chunk_mib == 0 else min(n, max(128, chunk_mib * 2**20 // (2 * padded_in) // 128 * 128))
    dense = torch.empty(chunk, padded_in, device=x.device, dtype=torch.bfloat16)
    out = torch.empty(x.shape[0], n, device=x.device, dtype=torch.bfloat16)
    for row0 in range(0, n, chunk):
        rows = min(chunk, n - row0)
        fill(dense, row0, rows)
        torch.mm(x, dense[:rows, :in_features].T, out=out[:, row0 : row0 + rows])
    return out


def sum_splits(out: torch.Tensor, split: int, m: int, n: int) -> torch.Tensor:
    """The bf16 [m, n] result: `out` itself, or the sum of its `split` float32 partial products."""
    if split == 1:
        return out
    y = torch.empty(m, n, device=out.device, dtype=torch.bfloat16)
    _sum_splits_kernel[(triton.cdiv(m * n, 1024),)](out, y, m * n, split, 1024, num_warps=4)
    return y


def candidates(m: int, gemv_configs: list[tuple] = GEMV_CONFIGS) -> list[tuple[str, tuple]]:
    """Launches to time for m tokens (a backend passes its own GEMV configurations). Up to
    GEMV_MAX_TOKENS, the GEMV (one program column per token, the weights re-read from L2) competes with
    the tensor-core GEMM; from DEQUANT_MIN_TOKENS, dequantize + cuBLAS competes with it."""
    gemv = [("gemv", c) for c in gemv_configs]
    if m <= 4:
        return gemv
    if m < DEQUANT_MIN_TOKENS:
        return (gemv if m <= GEMV_MAX_TOKENS else []) + [("gemm", c) for c in GEMM_SMALL]
    return [("gemm", c) for c in GEMM_LARGE] + [("dequant", c) for c in DEQUANT_CHUNKS]


def _time_ms(run, choice: tuple[str, tuple]) -> float:
    """A candidate's median time; one whose tiles do not fit the GPU's shared memory is never picked."""
    try:
        return triton.testing.do_bench(lambda: run(*choice), warmup=2, rep=10, return_mode="median")
    except triton.runtime.errors.OutOfResources:
        return math.inf


def tuned_call(key: tuple, options: list[tuple[str, tuple]], run) -> torch.Tensor:
    """run(kind, config) with the fastest of `options` for `key` (timed on first eager use, then cached)."""
    if triton is None:
        raise RuntimeError("the integer kernels need the triton package")
    choice = _tuned.get(key)
    if choice is None:
        if torch.cuda.is_current_stream_capturing():
            choice = options[0]  # cannot time inside a capture; callers warm up eagerly first
        else:
            # interleaved rounds, each option's best kept: one timing taken while the clock ramps up
            # or a neighbour's burst does not decide alone (one round picked a GEMM 3x slower than
            # dequantize + cuBLAS at 1024x4096 W2, 2048 tokens; H200 2026-12-02)
            times = dict.fromkeys(options, math.inf)
            for _ in range(TUNING_ROUNDS):
                for option in options:
                    times[option] = min(times[option], _time_ms(run, option))
            choice = min(options, key=times.__getitem__)
            _tuned[key] = choice
    return run(*choice)


def matmul(x: torch.Tensor, layer: PackedLinear) -> torch.Tensor:
    """x [M, K] bf16 @ W^T with the best tuned kernel for this shape (tuned on first eager use)."""
    x = x.to(torch.bfloat16).contiguous()
    return tuned_call(layer.tuning_key(x.shape[0]), candidates(x.shape[0]), lambda kind, config: _run(kind, config, x, layer))


def tuned_choice(m: int, layer: nn.Module) -> tuple[str, tuple] | None:
    """The launch tuned for m tokens on `layer` (a packed layer of this or another Triton backend), if any."""
    return _tuned.get(layer.tuning_key(m)) if hasattr(layer, "tuning_key") else None
