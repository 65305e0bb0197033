"""RTN against a float64 reference written from the definition, and its storage accounting."""
import itertools

import pytest
import torch

from harness.compress import layer_bits
from harness.config import Compression
from harness.methods.rtn import RoundToNearest
from harness.numerics.quant import QuantFormat


def reference_rtn(w: torch.Tensor, bits: int, group: int, symmetric: bool):
    """Float64, one group at a time, straight from GPTQ's quantizer definition. Also returns where
    w / scale sits on a rounding tie (symmetric grids put max|w| exactly on one, by construction)."""
    w = w.double()
    out = torch.empty_like(w)
    tie = torch.zeros_like(w, dtype=torch.bool)
    maxq = 2**bits - 1
    for r in range(w.shape[0]):
        for c in range(0, w.shape[1], group):
            x = w[r, c : c + group]
            lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
            if symmetric:
                hi = max(-lo, hi)
                lo = -hi
            if lo == 0 and hi == 0:
                lo, hi = -1.0, 1.0
            scale = (hi - lo) / maxq
            zero = (maxq + 1) / 2 if symmetric else round(-lo / scale)
            q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
            out[r, c : c + group] = scale * (q - zero)
            tie[r, c : c + group] = ((x / scale).frac().abs() - 0.5).abs() < 1e-4
    return out, tie


@pytest.mark.parametrize(
    "bits,group,symmetric", list(itertools.product([2, 3, 4, 8], [16, 64, -1], [False, True]))
)
def test_rtn_matches_float64_reference(bits, group, symmetric):
    torch.manual_seed(bits * 100 + group)
    layer = torch.nn.Linear(128, 24, bias=False)
    weight = layer.weight.detach().clone()
    weight[3, :16] = 0.0  # an all-zero group
    layer.weight.data.copy_(weight)
    fmt = QuantFormat(bits=bits, group_size=group, symmetric=symmetric)
    RoundToNearest().compress(None, {"l": layer}, Compression(quant=fmt, sparsity=None))
    ref, tie = reference_rtn(weight, bits, 128 if group == -1 else group, symmetric)
    step = (weight.abs().max() / (2**bits - 1)).item()
    # float32 and float64 agree to rounding error everywhere except on exact rounding ties, where
    # either neighbouring grid point is the nearest
    diff = (layer.weight.double() - ref).abs()
    assert diff[~tie].max().item() < step * 1e-4
    assert torch.all(diff[tie] < 2 * step)
    assert torch.unique(layer.weight[0, :group if group > 0 else 128]).numel() <= 2**bits


def test_rtn_keeps_zero_exact_and_counts_storage():
    fmt = QuantFormat(bits=3, group_size=32, symmetric=False)
    per_channel = QuantFormat(bits=4, group_size=-1, symmetric=True)
    wide = torch.nn.Linear(256, 4, bias=False)
    bits = lambda f: layer_bits(wide, 1024, Compression(quant=f, sparsity=None), RoundToNearest().group_param_bits) / 1024
    assert bits(fmt) == 3 + (16 + 3) / 32  # float16 scale + 3-bit zero per group of 32
    assert bits(per_channel) == 4 + 16 / 256  # symmetric: a scale per row, no zero
    layer = torch.nn.Linear(64, 8, bias=False)
    layer.weight.data[:, ::2] = 0.0
    RoundToNearest().compress(None, {"l": layer}, Compression(quant=fmt, sparsity=None))
    assert torch.all(layer.weight[:, ::2] == 0)
