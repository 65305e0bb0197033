"""GPTQ, SparseGPT and Wanda against their reference implementations, transcribed below as plain
functions (IST-DASLab/gptq gptq.py `GPTQ.fasterquant` with quant.py's `Quantizer`, IST-DASLab/sparsegpt
sparsegpt.py `SparseGPT.fasterprune`, locuslab/wanda lib/prune.py `prune_wanda`), on matrices several
lazy-update blocks wide (512 columns, block 128), so that the cross-block error update and groups
starting inside a block are exercised. The method must give the same weights within float tolerance.
"""
from __future__ import annotations

import pytest
import torch

from harness.compress import compressible_layers
from harness.config import Compression
from harness.methods import load_method
from harness.methods.gptq import dead_inputs, gptq_quantize, inverse_hessian_upper
from harness.methods.sparsegpt import sparsegpt_prune
from harness.methods.wanda import wanda_mask
from harness.numerics.quant import QuantFormat
from harness.numerics.sparsity import SparsityPattern

from test_calibration_methods import tiny_model, calibration  # noqa: F401  (the fixture)
from harness.numerics.calibration import find_blocks

ROWS, COLS, BLOCK = 96, 512, 128
TOLERANCE = 1e-5  # largest |difference| allowed, relative to max |W|


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def problem(seed: int = 0, dead: bool = True):
    """W [96, 512] and H = 2/n X^T X from activations with outlier channels and (`dead`) one dead input."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(ROWS, COLS, generator=gen)
    x = torch.randn(1024, COLS, generator=gen) * torch.exp(torch.randn(COLS, generator=gen))
    if dead:
        x[:, 7] = 0
    return w, 2 / 8 * x.T @ x


# --- the references, transcribed ------------------------------------------------------------------


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class Quantizer:
    """quant.py's Quantizer, configure(bits, perchannel=True, sym=sym, mse=False), weight=True path."""

    def __init__(self, bits, sym):
        self.maxq, self.sym = torch.tensor(2**bits - 1), sym

    def find_params(self, x):
        tmp = torch.zeros(x.shape[0])
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            tmp = xmin < 0
            if torch.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1
        self.scale = (xmax - xmin) / self.maxq
        if self.sym:
            self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = torch.round(-xmin / self.scale)
        self.scale = self.scale.reshape(-1, 1)
        self.zero = self.zero.reshape(-1, 1)


def fasterquant(W, H, quantizer, blocksize=128, percdamp=0.01, groupsize=-1, actorder=False, static_groups=False):
    W = W.clone().float()
    H = H.clone()
    columns = W.shape[1]
    quantizer.find_params(W)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups:
        import copy

        groups = []
        for i in range(0, columns, groupsize):
            q = copy.deepcopy(quantizer)
            q.find_params(W[:, i : (i + groupsize)])
            groups.append(q)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        quantizer.find_params(W[:, (i1 + i) : (i1 + i + groupsize)])
                else:
                    idx = i1 + i
                    if actorder:
                        idx = perm[idx]
                    quantizer = groups[idx // groupsize]
            q = quantize(w.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, invperm]
    return Q


def llmcompressor_qparams(W, bits, groupsize):
    """compressed-tensors' calculate_qparams for asymmetric INT groups, from llm-compressor's
    memoryless_minmax weight observer (its default) over the whole weight: codes in
    [-2^(bits-1), 2^(bits-1) - 1], the zero point rounded to int8."""
    bit_min, bit_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    groups = W.unflatten(-1, (-1, groupsize))
    min_vals = torch.clamp(groups.amin(-1), max=0)
    max_vals = torch.clamp(groups.amax(-1), min=0)
    scales = (max_vals - min_vals) / float(bit_max - bit_min)
    zero_points = torch.clamp(bit_min - min_vals / scales, bit_min, bit_max)
    scales = torch.where(scales == 0, torch.finfo(scales.dtype).eps, scales)
    return scales, torch.round(zero_points).to(torch.int8), bit_min, bit_max


def llmcompressor_quantize_weight(W, H, bits, groupsize, blocksize=128, percdamp=0.01, actorder=None):
    """llm-compressor 0.14 modifiers/gptq/gptq_quantize.py quantize_weight, one module (eager
    gptq_block_update, GROUP strategy): qparams computed once by the observer from the original
    weight (before dead inputs are zeroed), actorder "static" (= "weight", GPTQModifier's default)
    permutes the columns but keeps every column's original group."""
    W = W.clone().float()
    H = H.clone()
    columns = W.shape[1]
    scale, zero_point, bit_min, bit_max = llmcompressor_qparams(W, bits, groupsize)
    perm = None
    if actorder == "static":
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    g_idx = torch.arange(columns, dtype=torch.int) // groupsize
    if perm is not None:
        g_idx = g_idx[perm]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            g = g_idx[i1 + i]
            scaled = w / scale[:, g] + zero_point[:, g].to(w.dtype)  # fake_quantize, CHANNEL strategy
            q = (torch.round(torch.clamp(scaled, bit_min, bit_max)) - zero_point[:, g].to(w.dtype)) * scale[:, g]
            error = (w - q) / Hinv1[i, i]
            Q1[:, i] = q
            Err1[:, i] = error
            W1[:, i:] -= error.unsqueeze(-1) * Hinv1[i, i:].unsqueeze(0)
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W if perm is None else W[:, torch.argsort(perm)]


def fasterprune(W, H, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01, quantizer=None):
    W = W.clone().float()
    H = H.clone()
    columns = W.shape[1]
    if quantizer is not None:
        quantizer.find_params(W)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i : (i + prunem)] ** 2 / (torch.diag(Hinv1)[i : (i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            if quantizer is not None:
                q = quantize(q.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def wanda_prune_layer_masks(weight, scaler_row, prune_n=0, prune_m=0, sparsity_ratio=0.5):
    """prune_wanda's mask for one linear (True = pruned)."""
    W_metric = torch.abs(weight) * torch.sqrt(scaler_row.reshape((1, -1)))
    W_mask = torch.zeros_like(W_metric) == 1
    if prune_n != 0:
        for ii in range(W_metric.shape[1]):
            if ii % prune_m == 0:
                tmp = W_metric[:, ii : (ii + prune_m)].float()
                W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    else:
        sort_res = torch.sort(W_metric, dim=-1, stable=True)
        indices = sort_res[1][:, : int(W_metric.shape[1] * sparsity_ratio)]
        W_mask.scatter_(1, indices, True)
    return W_mask


def prune_wanda(model, tokens, prune_n=0, prune_m=0, sparsity_ratio=0.5):
    """prune_wanda's block loop: every linear of a block is scored from the block's dense inputs
    (WrappedGPT.scaler_row: running mean of ||x_j||^2 over samples), pruned, and the pruned block
    gives the next block's inputs."""
    layers = find_blocks(model)
    seen = {}

    def catch(module, args, kwargs):
        seen.setdefault("inps", []).append(args[0] if args else kwargs["hidden_states"])
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise StopIteration

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    for j in range(tokens.shape[0]):
        try:
            model(tokens[j : j + 1], use_cache=False)
        except StopIteration:
            pass
    handle.remove()
    inps, kwargs = torch.cat(seen["inps"]), seen["kwargs"]
    outs = torch.zeros_like(inps)
    for layer in layers:
        subset = {name: m for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        scaler_row = {name: torch.zeros(m.in_features) for name, m in subset.items()}
        nsamples = {name: 0 for name in subset}

        def add_batch(name):
            def tmp(_, inp, out):
                x = inp[0].data
                x = x.reshape((-1, x.shape[-1])).t().float()
                scaler_row[name] *= nsamples[name] / (nsamples[name] + 1)
                nsamples[name] += 1
                scaler_row[name] += torch.norm(x, p=2, dim=1) ** 2 / nsamples[name]

            return tmp

        handles = [subset[name].register_forward_hook(add_batch(name)) for name in subset]
        for j in range(inps.shape[0]):
            outs[j] = layer(inps[j].unsqueeze(0), **kwargs)[0]
        for h in handles:
            h.remove()
        for name in subset:
            subset[name].weight.data[wanda_prune_layer_masks(subset[name].weight.data, scaler_row[name], prune_n, prune_m, sparsity_ratio)] = 0
        for j in range(inps.shape[0]):
            outs[j] = layer(inps[j].unsqueeze(0), **kwargs)[0]
        inps, outs = outs, inps


# --- parity ---------------------------------------------------------------------------------------


def assert_same(ours: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor) -> float:
    """The largest |difference| relative to max |W|, asserted below TOLERANCE (and returned)."""
    largest = ((ours - reference).abs().max() / weight.abs().max()).item()
    assert largest <= TOLERANCE, largest
    return largest


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize(
    "group, act_order, static_groups",
    [(64, False, False), (128, False, False), (64, True, True), (128, True, True), (64, False, True), (64, True, False), (-1, False, False), (-1, True, False)],
    ids=["g64", "g128", "g64-act-order-static", "g128-act-order-static", "g64-static", "g64-act-order", "per-row", "per-row-act-order"],
)
def test_gptq_is_fasterquant(bits, group, act_order, static_groups):
    w, h = problem(bits)
    fmt = QuantFormat(bits, group, symmetric=False)
    reference = fasterquant(w, h, Quantizer(bits, sym=False), BLOCK, 0.01, group, act_order, static_groups)
    assert_same(gptq_quantize(w, h, fmt, 0.01, BLOCK, act_order, static_groups), reference, w)


def test_gptq_symmetric_is_fasterquant():
    w, h = problem(5)
    reference = fasterquant(w, h, Quantizer(4, sym=True), BLOCK, 0.01, 64)
    assert_same(gptq_quantize(w, h, QuantFormat(4, 64, True), 0.01, BLOCK), reference, w)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("act_order", [False, True], ids=["", "act-order"])
def test_gptq_static_groups_is_llmcompressor(bits, group, act_order):
    """llm-compressor's GPTQ (observer qparams from the whole original weight, then the sweep) is our
    static_groups=True, with act_order its default actorder "static". Without dead inputs: the
    toolkit's observer sees a dead input's weights before they are zeroed, the reference's static
    groups after (test_gptq_llmcompressor_dead_input)."""
    w, h = problem(bits, dead=False)
    reference = llmcompressor_quantize_weight(w, h, bits, group, BLOCK, 0.01, "static" if act_order else None)
    assert_same(gptq_quantize(w, h, QuantFormat(bits, group, False), 0.01, BLOCK, act_order, static_groups=True), reference, w)


def test_gptq_llmcompressor_dead_input():
    """With a dead input (column 7) only its group's parameters differ, and only when that input's
    weights set the group's range: the rest of the matrix before the group is the same."""
    w, h = problem(3)
    w[:, 7] = 3 * w.abs().max()  # sets the range of group 0 in every row
    ours = gptq_quantize(w, h, QuantFormat(3, 64, False), 0.01, BLOCK, static_groups=True)
    theirs = llmcompressor_quantize_weight(w, h, 3, 64, BLOCK, 0.01)
    assert not torch.allclose(ours[:, :64], theirs[:, :64])
    w_zeroed = w.clone()
    w_zeroed[:, 7] = 0
    assert_same(ours, llmcompressor_quantize_weight(w_zeroed, h, 3, 64, BLOCK, 0.01), w)


@pytest.mark.parametrize(
    "pattern, bits",
    [(SparsityPattern(0.5), None), (SparsityPattern(0.5, 2, 4), None), (SparsityPattern(0.5, 4, 8), None), (SparsityPattern(0.6), None),
     (SparsityPattern(0.5), 4), (SparsityPattern(0.5, 2, 4), 3)],
    ids=["50%", "2:4", "4:8", "60%", "50%-joint-w4", "2:4-joint-w3"],
)
def test_sparsegpt_is_fasterprune(pattern, bits):
    w, h = problem(1)
    fmt = None if bits is None else QuantFormat(bits, -1, symmetric=False)  # the reference's joint mode is per row
    quantizer = None if bits is None else Quantizer(bits, sym=False)
    reference = fasterprune(w, h, pattern.sparsity, pattern.n or 0, pattern.m or 0, BLOCK, 0.01, quantizer)
    ours, kept = sparsegpt_prune(w, inverse_hessian_upper(h, 0.01), dead_inputs(h), pattern, fmt, BLOCK)
    assert_same(ours, reference, w)
    if bits is None:
        assert kept == int(torch.count_nonzero(reference))


@pytest.mark.parametrize("pattern", [SparsityPattern(0.5), SparsityPattern(0.5, 2, 4), SparsityPattern(0.5, 4, 8)], ids=["50%", "2:4", "4:8"])
def test_wanda_mask_is_prune_wandas(pattern):
    w, h = problem(2)
    scaler_row = h.diagonal() / 2 / 1024  # any positive multiple of ||X_j||^2
    reference = ~wanda_prune_layer_masks(w, scaler_row, pattern.n or 0, pattern.m or 0, pattern.sparsity)
    assert torch.equal(wanda_mask(w, h.diagonal(), pattern), reference)


@pytest.mark.parametrize("pattern", [SparsityPattern(0.5), SparsityPattern(0.5, 2, 4)], ids=["50%", "2:4"])
def test_wanda_method_is_prune_wanda(calibration, pattern):  # noqa: F811
    """The whole method with its defaults (all linears of a block scored from the block's dense
    inputs; the pruned block feeds the next) against prune_wanda's block loop on the tiny model."""
    tokens = calibration[:4]
    ours, reference = tiny_model(), tiny_model()
    load_method("wanda", {}).compress(ours, compressible_layers(ours), Compression(None, pattern), tokens)
    with torch.no_grad():
        prune_wanda(reference, tokens, pattern.n or 0, pattern.m or 0, pattern.sparsity)
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        assert torch.equal(a != 0, b != 0), name
        torch.testing.assert_close(a, b, rtol=0, atol=0)
