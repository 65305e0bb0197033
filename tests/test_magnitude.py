"""Magnitude pruning reaches exactly the asked sparsity or N:M pattern, and drops the smallest weights."""
import pytest
import torch

from harness.config import Compression
from harness.methods.magnitude import Magnitude
from harness.numerics.sparsity import SparsityPattern


def prune(weight, pattern):
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    Magnitude().compress(None, {"l": layer}, Compression(quant=None, sparsity=pattern))
    return layer.weight.detach()


@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.5, 0.7, 0.9])
def test_unstructured_exact_count_of_smallest(sparsity):
    torch.manual_seed(0)
    w = torch.randn(48, 96)
    out = prune(w, SparsityPattern(sparsity))
    pruned = out == 0
    assert int(pruned.sum()) == int(w.numel() * sparsity)
    assert w.abs()[pruned].max() <= w.abs()[~pruned].min()  # the smallest ones went
    assert torch.equal(out[~pruned], w[~pruned])  # the rest are untouched


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern_in_every_block(n, m):
    torch.manual_seed(1)
    w = torch.randn(32, 64)
    out = prune(w, SparsityPattern(1 - n / m, n, m))
    blocks_kept = (out != 0).reshape(32, 64 // m, m).sum(-1)
    assert torch.all(blocks_kept == n)
    blocks_w, blocks_out = w.abs().reshape(32, -1, m), out.abs().reshape(32, -1, m)
    kept_min = torch.where(blocks_out > 0, blocks_w, torch.inf).amin(-1)
    dropped_max = torch.where(blocks_out == 0, blocks_w, -torch.inf).amax(-1)
    assert torch.all(dropped_max <= kept_min)
