"""Kernel backends on the CPU: the packing formats round-trip exactly, packed layers compute the
compressed model's function, backends are chosen (or refused with a reason) before any timing, and
the Triton kernels themselves run in Triton's CPU interpreter against the float32 reference."""
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import compress, kernels, latency, models
from harness.config import Compression, ConfigError
from harness import data
from harness.kernels import intq, sparse24_intq
from harness.numerics.quant import QuantFormat, fake_quantize
from harness.numerics.sparsity import SparsityPattern, nm_mask

LAYOUTS = [(2, 32, 256), (3, 64, 192), (3, -1, 200), (4, 128, 512), (8, -1, 576), (8, 256, 512)]


@pytest.mark.parametrize("bits,group,k", LAYOUTS)
def test_packing_round_trips_exactly(bits, group, k):
    layout = intq.Layout.of(bits, k, group)
    codes = torch.randint(0, 2**bits, (37, k), generator=torch.Generator().manual_seed(bits + k))
    codes[0] = 2**bits - 1  # every bit set: the sign bit of the int32 words
    qweight = intq.pack_codes(codes, layout)
    assert qweight.dtype == torch.int32 and qweight.shape == (37, bits, layout.tiles, layout.words)
    assert qweight.numel() * 32 == 37 * layout.padded_in * bits  # exactly `bits` bits a weight
    assert torch.equal(intq.unpack_codes(qweight, layout), codes)


@pytest.mark.parametrize("bits", intq.SUPPORTED_BITS)
def test_every_code_bit_has_one_place(bits):
    """The pieces cover each of a tile slice's 32 codes' bits once and each word bit once."""
    code_bits = sorted((j, offset + i) for _, _, j, offset, width in intq.PIECES[bits] for i in range(width))
    word_bits = sorted((c, pos + i) for c, pos, _, _, width in intq.PIECES[bits] for i in range(width))
    assert code_bits == [(j, b) for j in range(32) for b in range(bits)]
    assert word_bits == [(c, b) for c in range(bits) for b in range(32)]


@pytest.mark.parametrize("bits,group,k", LAYOUTS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_packed_layer_is_the_fake_quantized_layer(bits, group, k, symmetric):
    torch.manual_seed(k)
    linear = torch.nn.Linear(k, 48)
    linear.weight.data.copy_(fake_quantize(linear.weight.data, QuantFormat(bits, group, symmetric)))
    layer, error = intq.PackedLinear.from_linear(linear, bits, group)
    assert error <= kernels.WEIGHT_ERROR_LIMIT
    w = linear.weight.data
    # float16 scale and offset: within 2^-10 of a weight's magnitude, far under one grid step
    assert (layer.dequantized() - w).abs().max() <= 2**-10 * w.abs().max()
    x = torch.randn(5, k)
    assert torch.allclose(layer(x), linear(x), rtol=1e-3, atol=1e-3 * linear(x).abs().max().item())


def test_grid_fit_refuses_weights_off_the_grid():
    w = torch.randn(64, 256)
    folded = fake_quantize(w * torch.rand(256) + 0.5, QuantFormat(4, 128, False)) / (torch.rand(256) + 0.5)  # AWQ-like
    for weight in (w, folded):
        assert intq.fit_grid(weight, intq.Layout.of(4, 256, 128))[3] > 3 * kernels.WEIGHT_ERROR_LIMIT


def test_gptq_like_groups_that_miss_a_grid_end_still_fit():
    w = fake_quantize(torch.randn(32, 128), QuantFormat(3, 128, False))
    w[w == w.amax(1, keepdim=True)] = 0.0  # the top code unused in every row (0 is on the grid)
    assert intq.fit_grid(w, intq.Layout.of(3, 128, 128))[3] <= kernels.WEIGHT_ERROR_LIMIT


@pytest.mark.parametrize("compression,method,options,reason", [
    (Compression(None, SparsityPattern(0.5)), "magnitude", {}, "only 2:4"),
    (Compression(QuantFormat(3, 64, False), SparsityPattern(0.5, 2, 4)), "sparsegpt", {}, "2:4 sparse + 3-bit"),
    (Compression(QuantFormat(5, 64, False), None), "rtn", {}, "5-bit"),
    (Compression(QuantFormat(4, 48, False), None), "gptq", {}, "multiple of 32"),
    (Compression(QuantFormat(3, 64, False), None), "hqq", {}, "axis=1"),
])
def test_compressions_without_a_kernel_say_why(compression, method, options, reason):
    backend, why = kernels.choose(compression, method, options)
    assert backend is None and reason in why


def test_backends_chosen():
    assert kernels.choose(Compression(None, None), "none", {})[0].NAME == "bf16-cublas"
    assert kernels.choose(Compression(None, SparsityPattern(0.5, 2, 4)), "wanda", {})[0].NAME == "cusparselt-2:4"
    assert kernels.choose(Compression(QuantFormat(4, 64, True), None), "bnb", {})[0].NAME == "bitsandbytes-4bit"
    assert kernels.choose(Compression(QuantFormat(3, -1, False), None), "hqq", {"axis": 1})[0] is intq
    assert kernels.choose(Compression(QuantFormat(4, 128, False), SparsityPattern(0.5, 2, 4)), "sparsegpt", {})[0] is sparse24_intq


def two_four_quantized(n: int, k: int, bits: int, group: int, symmetric: bool, seed: int) -> torch.Tensor:
    """A SparseGPT-like weight: on a group grid with an integer zero, half of each block of 4 set to 0."""
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    return fake_quantize(w, QuantFormat(bits, group, symmetric)) * nm_mask(w.abs(), 2, 4)


@pytest.mark.parametrize("bits,k", [(4, 256), (2, 100), (8, 64)])
def test_two_four_packing_round_trips_exactly(bits, k):
    gen = torch.Generator().manual_seed(k)
    codes = torch.randint(0, 2**bits, (9, k), generator=gen)
    codes[0] = 2**bits - 1  # every bit set: the sign bit of the int32 words
    positions = torch.rand(9, k // 4, 4, generator=gen).argsort(-1)[..., :2].sort(-1).values
    padded = -(-k // 32) * 32
    qweight, index = sparse24_intq.pack(codes, positions, bits, padded)
    assert qweight.shape == (9, bits // 2, padded // 32) and index.shape == (9, padded // 32)
    assert (qweight.numel() + index.numel()) * 32 == 9 * padded * (bits + 2) // 2  # (bits + 2) bits a kept weight
    kept, where = sparse24_intq.unpack(qweight, index, bits)
    assert torch.equal(where[:, : k // 4], positions)
    assert torch.equal(kept[:, : k // 4], codes.view(9, -1, 4).gather(-1, positions))


@pytest.mark.parametrize("bits,group,k", [(4, 128, 512), (4, 32, 100), (2, 64, 192), (8, -1, 576)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_two_four_packed_layer_is_the_compressed_layer(bits, group, k, symmetric):
    if group != -1 and k % group:
        group = -1
    linear = torch.nn.Linear(k, 40)
    linear.weight.data.copy_(two_four_quantized(40, k, bits, group, symmetric, seed=k))
    linear.weight.data[0, :8] = 0  # blocks with fewer than two nonzeros
    w = linear.weight.data
    w[1, :3] = 0.0
    w[1, 3] = w[1, 4:32][w[1, 4:32] != 0][0]  # one nonzero at the block's last position, a value of its group
    layer, error = sparse24_intq.convert(linear, Compression(QuantFormat(bits, group, symmetric), SparsityPattern(0.5, 2, 4)), {})
    assert error <= kernels.WEIGHT_ERROR_LIMIT
    dense = layer.dequantized()
    assert (dense - w).abs().max() <= 2**-10 * w.abs().max()
    x = torch.randn(3, k)
    assert torch.allclose(layer(x), linear(x), rtol=1e-3, atol=1e-3 * linear(x).abs().max().item())


def test_two_four_kernel_refuses_what_it_cannot_store():
    linear = torch.nn.Linear(64, 8)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        sparse24_intq.SparsePackedLinear(linear, 4, 32)
    with pytest.raises(ValueError, match="3-bit"):
        sparse24_intq.SparsePackedLinear(linear, 3, 32)


@torch.no_grad()
@pytest.mark.parametrize("method,compression,packed", [
    ("sparsegpt", Compression(QuantFormat(4, 64, False), SparsityPattern(0.5, 2, 4)), sparse24_intq.SparsePackedLinear),
    ("awq", Compression(QuantFormat(4, 64, False), None), intq.PackedLinear),  # its scales folded into the previous operations
    ("gptq", Compression(QuantFormat(3, 32, True), None), intq.PackedLinear),
])
def test_calibrated_methods_models_run_through_their_kernels(method, compression, packed):
    from harness.methods import load_method

    model = models.load_model(TINY, "cpu", torch.float32, 0)
    windows = data.calibration_windows(models.byte_tokenizer(), "pydoc", n_samples=4, seqlen=64, seed=0)
    load_method(method, {}).compress(model, compress.compressible_layers(model), compression, windows)
    ids = torch.randint(model.config.vocab_size, (2, 32))
    simulated = model(ids).logits
    backend, _ = kernels.choose(compression, method, {})
    kernels.convert(model, compress.compressible_layers(model), backend, compression, {})
    # 14 layers; intq stacks q, k, v and gate, up of each of the 2 blocks (8 layers); 2:4+int does not fuse
    assert sum(isinstance(m, packed) for m in model.modules()) == (8 if packed is intq.PackedLinear else 14)
    # float16 scales and offsets round each weight by up to ~2^-11 of its group's range; a wrong code is 1e-2 and more
    assert ((model(ids).logits - simulated).norm() / simulated.norm()).item() < 2e-3


def test_latency_settings_checked_and_dropped_when_off():
    with pytest.raises(ConfigError, match="device=cuda"):
        latency.settle({"latency": True, "device": "cpu", "latency_prompt_len": 8, "latency_batch": 2})
    with pytest.raises(ConfigError, match="latency_batch"):
        latency.settle({"latency": True, "device": "cuda", "latency_prompt_len": 8, "latency_batch": 0})
    with pytest.raises(ConfigError, match="latency_compile"):
        latency.settle({"latency": True, "device": "cuda", "latency_prompt_len": 8, "latency_batch": 2, "latency_compile": "yes"})
    config = {"latency": False, "latency_prompt_len": 8, "latency_batch": 2, "device": "cpu"}
    latency.settle(config)
    assert config == {"device": "cpu"}  # quality-only runs keep their run ids


TINY = {"name": "tiny", "random": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "num_key_value_heads": 2}}


@torch.no_grad()
def test_packed_model_computes_the_compressed_model():
    from harness.methods.rtn import RoundToNearest

    model = models.load_model(TINY, "cpu", torch.float32, 0)
    compression = Compression(QuantFormat(3, 64, False), None)
    RoundToNearest().compress(model, compress.compressible_layers(model), compression)
    ids = torch.randint(model.config.vocab_size, (2, 32))
    simulated = model(ids).logits
    backend, _ = kernels.choose(compression, "rtn", {})
    kernels.convert(model, compress.compressible_layers(model), backend, compression, {})
    assert not compress.compressible_layers(model)  # every compressed nn.Linear was swapped out
    # per block: q, k, v fused into one layer and gate, up into another; o and down alone
    assert sum(isinstance(m, intq.PackedLinear) for m in model.modules()) == 8
    assert sum(isinstance(m, kernels.ProductSlice) for m in model.modules()) == 10
    calls = []
    for block in model.model.layers:
        for fused in (block.self_attn.q_proj_k_proj_v_proj, block.mlp.gate_proj_up_proj):
            fused.register_forward_hook(lambda *args: calls.append(1))
    assert ((model(ids).logits - simulated).norm() / simulated.norm()).item() < 1e-3
    assert len(calls) == 4  # one product per fused layer a forward, shared by its slices
    assert all(m.shared.input is None for m in model.modules() if isinstance(m, kernels.ProductSlice))  # nothing held after


@torch.no_grad()
def test_fused_siblings_stack_biases_and_keep_the_bf16_layers():
    """bf16 (the baseline) fuses as the packed backends do; a sibling's bias lands in its own columns,
    and a sibling without one gets zeros there."""
    from harness.kernels import bf16

    model = models.load_model(TINY, "cpu", torch.float32, 0)
    attn = model.model.layers[0].self_attn
    attn.q_proj.bias = torch.nn.Parameter(torch.randn(attn.q_proj.out_features))
    attn.v_proj.bias = torch.nn.Parameter(torch.randn(attn.v_proj.out_features))
    ids = torch.randint(model.config.vocab_size, (2, 12))
    dense = model(ids).logits
    kernels.convert(model, compress.compressible_layers(model), bf16, Compression(None, None), {})
    assert isinstance(attn.q_proj, kernels.ProductSlice) and attn.q_proj_k_proj_v_proj.bias is not None
    assert ((model(ids).logits - dense).norm() / dense.norm()).item() < 1e-5


@torch.no_grad()
def test_packed_model_compiles_into_one_graph_and_decodes_as_eager():
    """latency_compile's path on the CPU: torch.compile (inductor) takes the packed model whole
    (fullgraph: each packed layer is one opaque harness::packed_product, no graph break), and a prefill
    then one decode step through a static cache give eager's logits."""
    from harness.methods.rtn import RoundToNearest

    model = models.load_model(TINY, "cpu", torch.float32, 0)
    compression = Compression(QuantFormat(4, 64, False), None)
    RoundToNearest().compress(model, compress.compressible_layers(model), compression)
    kernels.convert(model, compress.compressible_layers(model), intq, compression, {})
    ids = torch.randint(model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    logits = []
    for forward in (model, torch.compile(model, dynamic=False, fullgraph=True)):
        cache = latency.new_cache(model, 24)
        forward(input_ids=ids, past_key_values=cache, cache_position=torch.arange(16), use_cache=True)
        position = torch.full((1,), 16)
        logits.append(forward(input_ids=ids[:, :1], past_key_values=cache, cache_position=position,
                              position_ids=position.view(1, 1), use_cache=True).logits)
    assert ((logits[1] - logits[0]).norm() / logits[0].norm()).item() < 1e-5


@torch.no_grad()
def test_strict_compile_raises_where_dynamo_would_fall_back_to_eager():
    """latency.measure times under strict_compile: past dynamo's recompile limit a new shape raises (and
    is recorded as compiled: false) instead of running uncompiled under a compiled label."""
    torch._dynamo.reset()  # entries of earlier tests' models would count against the limit
    model = models.load_model(TINY, "cpu", torch.float32, 0)
    compiled = torch.compile(model, dynamic=False)
    with latency.strict_compile(), torch._dynamo.config.patch(recompile_limit=1):
        compiled(torch.randint(model.config.vocab_size, (1, 8)))
        with pytest.raises(Exception, match="(?i)recompile|limit"):
            compiled(torch.randint(model.config.vocab_size, (1, 9)))
    torch._dynamo.reset()


@torch.no_grad()
@pytest.mark.parametrize("method,compression,reason", [
    ("magnitude", Compression(None, SparsityPattern(0.5)), "only 2:4"),
    ("awq", Compression(QuantFormat(4, 64, False), None), "not on the triton-intq grid"),  # unquantized weights stand in
])
def test_latency_unavailable_records_the_reason(method, compression, reason):
    model = models.load_model(TINY, "cpu", torch.float32, 0)
    record = latency.measure_run(model, compression, {"name": method}, {"latency_prompt_len": 8, "latency_batch": 2})
    assert record["available"] is False and reason in record["reason"]
    assert record["prefill_ms"] is None and record["decode_tokens_per_s"] is None


INTERPRETED = """
import torch
from harness.kernels import intq, sparse24_intq
from harness.numerics.quant import QuantFormat, fake_quantize
from harness.numerics.sparsity import nm_mask
torch.manual_seed(0)
backend = sparse24_intq if TWO_FOUR else intq
for bits, group, symmetric, n, k, m, kind, config in CASES:
    w = torch.randn(n, k)
    linear = torch.nn.Linear(k, n, bias=False)
    if TWO_FOUR:
        linear.weight.data.copy_(fake_quantize(w, QuantFormat(bits, group, symmetric)) * nm_mask(w.abs(), 2, 4))
        layer = sparse24_intq.SparsePackedLinear(linear, bits, group)
    else:
        linear.weight.data.copy_(fake_quantize(w, QuantFormat(bits, group, symmetric)))
        layer = intq.PackedLinear.from_linear(linear, bits, group)[0]
    x = torch.randn(m, k).bfloat16()
    ref = x.float() @ layer.dequantized().T
    out = backend._run(kind, config, x, layer).float()
    print(bits, group, kind, ((out - ref).norm() / ref.norm()).item())
"""
# (bits, group, symmetric, N, K, M, kind, config). intq: every width, symmetric and not, groups
# 32/64/128/256 and per channel; N and K multiples of the blocks (the unmasked GEMV) and not; several
# launch configurations, split-K (K=2048) included. The GEMM is left to the GPU tests: the interpreter's
# bf16 tl.dot returns garbage (1e11) in Triton 3.6 and 3.9 alike.
INTQ_CASES = [
    (4, 128, False, 40, 256, 1, "gemv", (16, 32, 4)), (4, 128, True, 64, 1024, 1, "gemv", (32, 16, 4)),
    (4, 32, False, 32, 2048, 2, "gemv", (16, 8, 2)), (3, 64, False, 24, 192, 3, "gemv", (16, 16, 2)),
    (3, 128, True, 33, 384, 1, "gemv", (32, 8, 2)), (3, -1, False, 17, 200, 2, "gemv", (16, 32, 4)),
    (3, 64, True, 32, 2048, 1, "gemv", (16, 16, 2)), (2, -1, False, 17, 200, 2, "gemv", (16, 16, 2)),
    (2, 32, True, 50, 160, 1, "gemv", (64, 16, 4)), (2, 128, False, 16, 4096, 1, "gemv", (16, 32, 4)),
    (8, -1, True, 20, 576, 1, "gemv", (16, 32, 4)), (8, 256, False, 32, 512, 1, "gemv", (32, 32, 4)),
    (3, 64, True, 50, 640, 2, "gemv", (16, 8, 1)), (4, 128, False, 64, 4096, 1, "gemv", (64, 32, 8)),
    (2, 128, True, 70, 1024, 1, "gemv", (64, 32, 4)), (4, 64, False, 33, 640, 2, "gemv", (8, 32, 2)),
    (2, 32, True, 40, 2048, 1, "gemv", (8, 32, 2)),
    (3, 32, False, 30, 128, 9, "dequant", (0,)), (3, -1, True, 9, 100, 3, "dequant", (0,)),
    (2, 64, False, 17, 320, 2, "dequant", (0,)), (8, 128, True, 12, 256, 2, "dequant", (0,)),
    (4, 128, True, 1100, 1024, 2, "dequant", (1,)),
]
# 2:4 + integer: 2/4/8 bits, groups 32/64/128 and per channel, N and K whole blocks and not (K = 100,
# 72: padded slices), split-K (K = 4096), every GEMV configuration.
TWO_FOUR_CASES = [
    (4, 128, False, 64, 1024, 1, "gemv", (32, 32, 4)), (4, 32, True, 40, 256, 2, "gemv", (64, 16, 4)),
    (4, -1, False, 17, 100, 1, "gemv", (32, 16, 2)), (2, 64, True, 33, 192, 3, "gemv", (16, 8, 1)),
    (8, 128, False, 32, 4096, 1, "gemv", (32, 16, 2)), (4, 64, True, 50, 192, 1, "gemv", (16, 8, 1)),
    (4, -1, True, 20, 72, 2, "gemv", (16, 8, 1)),
    (4, 128, False, 30, 256, 5, "dequant", (0,)), (2, -1, True, 9, 100, 2, "dequant", (0,)), (8, 32, False, 12, 64, 2, "dequant", (0,)),
    (4, 64, True, 1100, 1024, 3, "dequant", (1,)), (4, -1, False, 40, 520, 2, "dequant", (0,)),
]


@pytest.mark.parametrize("two_four,cases", [(False, INTQ_CASES), (True, TWO_FOUR_CASES)], ids=["intq", "2:4-intq"])
def test_triton_kernels_in_the_cpu_interpreter(two_four, cases):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = f"CASES = {cases!r}\nTWO_FOUR = {two_four}\n" + INTERPRETED
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [float(line.split()[-1]) for line in proc.stdout.splitlines()]
    assert len(errors) == len(cases) and max(errors) < 1e-2, proc.stdout  # bf16 output rounding: ~3e-3


def test_kernels_compile_for_hopper_without_int_to_float_in_the_gemv():
    """Triton's compiler (not only its interpreter) accepts every kernel for sm_90, no GPU needed; the
    GEMV decodes without I2F (its fields become floats through their bit patterns)."""
    pytest.importorskip("triton.backends.nvidia")
    sass = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_sass.py"), run_name="kernel_sass")
    ptr, compile_kernel = sass["ptr"], sass["compile_kernel"]
    for bits, n, k, group, config in [(3, 4096, 14336, 128, (64, 16, 4)), (4, 300, 1000, -1, (16, 16, 2)), (2, 64, 256, 32, (32, 16, 2)),
                                      (8, 96, 512, 64, (16, 32, 4)), (4, 1024, 4096, 128, (8, 32, 2))]:
        compiled = sass["new_kernel"](bits, n, k, group, config)[0]
        opcodes = [text.split()[0] for _, text in sass["instructions"](sass["sass_of"](compiled)[0])]
        assert opcodes and not [op for op in opcodes if op.startswith("I2F")], (bits, config)
        layout = intq.Layout.of(bits, k, group)
        pdt = "fp32" if bits == 8 else "fp16"
        common = [layout.tiles, layout.groups, layout.tiles_per_group]
        compile_kernel(intq._gemm_kernel, [ptr("bf16"), ptr("i32"), ptr(pdt), ptr(pdt), ptr("fp32"), 16, n, k, *common, k, intq.FLOAT_2_23]
                       + [("const", v) for v in (bits, layout.words, 16, 64, 4, True)], 4)
        compile_kernel(intq._dequant_kernel, [ptr("i32"), ptr(pdt), ptr(pdt), ptr("bf16"), 0, n, *common, intq.FLOAT_2_23]
                       + [("const", v) for v in (bits, layout.words, 32)], 4)
    compile_kernel(intq._sum_splits_kernel, [ptr("fp32"), ptr("bf16"), 1000, ("const", 4), ("const", 1024)], 4)
    for bits, n, k, group, config in [(4, 14336, 4096, 128, (32, 32, 4)), (2, 300, 1000, -1, (16, 8, 1))]:
        compiled = sass["two_four_kernel"](bits, n, k, group, config)[0]
        opcodes = [text.split()[0] for _, text in sass["instructions"](sass["sass_of"](compiled)[0])]
        assert opcodes and not [op for op in opcodes if op.startswith("I2F")], (bits, config)
        padded, slices, per_group = sparse24_intq.slicing(k, group)
        weights = [ptr("i32"), ptr("i32"), ptr("fp16"), ptr("fp16")]
        compile_kernel(sparse24_intq._dequant_kernel, weights + [ptr("bf16"), 0, n, slices, slices // per_group, per_group]
                       + [("const", v) for v in (bits, 32, sparse24_intq.DEQUANT_SLICES)], 4)
        compile_kernel(sparse24_intq._gemm_kernel, [ptr("bf16")] + weights + [ptr("fp32"), 16, n, k, slices, slices // per_group, per_group, k]
                       + [("const", v) for v in (bits, 16, 64, sparse24_intq.GEMM_SLICES, 4, True)], 4)
