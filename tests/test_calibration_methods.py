"""Calibration-based methods (GPTQ, SparseGPT, Wanda, AWQ) and their shared layer-wise engine, checked
against definitions: statistics against X computed from a plain forward, GPTQ against RTN, pruners
against magnitude pruning on the layer-output error ||WX - W'X||, masks against the pattern asked.

"Real activations" are those of the tiny-random Llama on pydoc calibration windows, with per-channel
log-normal RMSNorm gains: trained LLMs have a few input channels far larger than the rest, which is
what every one of these methods exploits, and randomly initialized norms (all ones) have none.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, Gemma3TextConfig, Qwen2Config

from harness import data, models
from harness.numerics.calibration import STATISTICS, calibrate, find_blocks, groupwise
from harness.compress import compressible_layers
from harness.config import Compression, ConfigError
from harness.methods import load_method
from harness.methods.awq import scaled_fake_quantize
from harness.methods.gptq import dead_inputs, gptq_quantize, inverse_hessian_upper
from harness.methods.sparsegpt import sparsegpt_prune
from harness.methods.wanda import wanda_mask
from harness.numerics.quant import QuantFormat, fake_quantize, grouped
from harness.numerics.sparsity import SparsityPattern, layer_mask

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "conf/model/tiny-random.yaml").read_text())
W3G32 = QuantFormat(bits=3, group_size=32, symmetric=False)
HALF = SparsityPattern(0.5)
TWO_FOUR = SparsityPattern(0.5, n=2, m=4)
CLI_RUNS = {  # name -> overrides; every method once with its defaults, and sparsity x quantization
    "gptq": ["method=gptq"],
    "awq": ["method=awq"],
    "sparsegpt": ["method=sparsegpt", "sparsity=0.5"],
    "wanda": ["method=wanda", "sparsity=0.5"],
    "sparsegpt-2:4-w4-joint": ["method=sparsegpt", "sparsity_pattern=2:4", "bits=4"],
    "wanda-2:4-then-rtn-w4": ["method=wanda", "sparsity_pattern=2:4", "bits=4"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def cli_runs(tmp_path_factory):
    """Start the end-to-end CLI runs first, in one background process, so they overlap the other tests."""
    root = tmp_path_factory.mktemp("cli")
    common = ["model=tiny-random", "calib.n_samples=4", "calib.seqlen=64", "seqlen=64", "max_eval_tokens=1024"]
    runs = {name: [*overrides, *common, f"results_dir={root / name}"] for name, overrides in CLI_RUNS.items()}
    # A fresh interpreter per run would spend most of its time importing, and a Hydra multirun cannot
    # sweep these heterogeneous overrides: one subprocess runs `python -m harness` once per run.
    with open(root / "cli.log", "w") as log:  # a file, not a pipe: nothing blocks on a full buffer
        proc = subprocess.Popen([sys.executable, "-c", _CLI_DRIVER, json.dumps(runs)], cwd=REPO, stdout=log, stderr=log)
    yield proc, root
    if proc.poll() is None:
        proc.kill()


# Runs `python -m harness <overrides>` once per run, in one interpreter (sys.argv as the CLI gets it).
_CLI_DRIVER = """
import json, sys, runpy, torch
torch.set_num_threads(1)
for name, overrides in json.loads(sys.argv[1]).items():
    sys.argv = ["harness", *overrides]
    try:
        runpy.run_module("harness", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        if exit.code:
            raise
"""


def tiny_model(seed: int = 0) -> torch.nn.Module:
    model = models.load_model(TINY, "cpu", torch.float32, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name:  # per-channel gains with outliers, as in trained LLMs
                param.copy_(torch.exp(torch.randn(param.shape, generator=gen)))
    return model


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    return data.calibration_windows(models.byte_tokenizer(), "pydoc", n_samples=8, seqlen=64, seed=0)


def layer_inputs(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """X [tokens, in_features] of every compressible linear, from the model's own forward, one window at a time."""
    found: dict[str, list[torch.Tensor]] = {}
    layers = compressible_layers(model)
    hooks = [
        layer.register_forward_hook(lambda m, args, out, name=name: found.setdefault(name, []).append(args[0].flatten(0, -2)))
        for name, layer in layers.items()
    ]
    with torch.no_grad():
        for window in tokens.split(1):
            model(window)
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(xs) for name, xs in found.items()}


@pytest.fixture(scope="module")
def activations(calibration):
    """(name, W, X, H) of every layer of the float model: H = 2/n X^T X as GPTQ defines it."""
    model = tiny_model()
    layers = compressible_layers(model)
    n = calibration.shape[0]
    return [(name, layers[name].weight.detach().clone(), x, 2 / n * x.T @ x) for name, x in layer_inputs(model, calibration).items()]


def output_error(w: torch.Tensor, compressed: torch.Tensor, x: torch.Tensor) -> float:
    return torch.linalg.norm((w - compressed) @ x.T).item()


# --- the engine ---------------------------------------------------------------------------------


def _qwen2():
    cfg = Qwen2Config(
        vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=16, max_window_layers=1,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


def _gemma3():
    cfg = Gemma3TextConfig(
        vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=16, sliding_window_pattern=2,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize(
    "build, true_sequential",
    [(tiny_model, True), (tiny_model, False), (_qwen2, True), (_gemma3, True)],
    ids=["llama", "llama-not-sequential", "qwen2-sliding-window", "gemma3-local-global"],
)
def test_engine_statistics_are_those_of_the_models_own_forward(build, true_sequential, calibration):
    """With nothing compressed, every group's statistics equal their definitions on the X of a plain
    forward: the recorded block arguments (per-layer sliding-window masks, Gemma-3's local rotary)
    and the block-to-block chaining reproduce the model."""
    torch.manual_seed(0)
    model = build()
    tokens = calibration[:4]
    expected = layer_inputs(model, tokens)
    seen = {}

    def record(group, inputs):
        seen[tuple(group)] = inputs

    result = calibrate(model, compressible_layers(model), tokens, groupwise(record, STATISTICS, true_sequential))
    assert set(result) == {"calib_s", "calib_blocks", "calib_tokens", "calib_peak_rss_bytes"}
    assert result["calib_blocks"] == len(find_blocks(model)) and result["calib_tokens"] == tokens.numel()
    assert sorted(n for group in seen for n in group) == sorted(expected)
    for group, inputs in seen.items():
        x = expected[group[0]]
        torch.testing.assert_close(inputs.hessian, 2 / tokens.shape[0] * x.T @ x, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(inputs.sq_norm, x.square().sum(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(inputs.abs_mean, x.abs().mean(0), rtol=1e-4, atol=1e-6)


def test_groups_are_linears_reading_one_input_in_execution_order(calibration):
    model = tiny_model()
    groups = []
    calibrate(model, compressible_layers(model), calibration[:1], groupwise(lambda group, inputs: groups.append([n.split(".")[-1] for n in group])))
    per_block = [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    assert groups == per_block * TINY["random"]["num_hidden_layers"]


# --- GPTQ ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [W3G32, QuantFormat(4, -1, True), QuantFormat(2, 16, False)], ids=str)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_identity_hessian_is_rtn(fmt, act_order):
    """With H = I no error is propagated, so GPTQ rounds every weight to nearest: exactly RTN."""
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(0))
    q = gptq_quantize(w, torch.eye(128), fmt, act_order=act_order, block_size=48)
    assert torch.equal(q, fake_quantize(w, fmt))


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_output_error_below_rtn(activations, act_order):
    for name, w, x, h in activations:
        gptq = output_error(w, gptq_quantize(w, h, W3G32, act_order=act_order), x)
        assert gptq < 0.8 * output_error(w, fake_quantize(w, W3G32), x), name


def test_gptq_output_has_at_most_2_bits_values_per_group(activations):
    _, w, _, h = activations[0]
    q = grouped(gptq_quantize(w, h, W3G32), W3G32)
    distinct = max(len(torch.unique(g)) for g in q.reshape(-1, q.shape[-1]))
    assert distinct <= 2**W3G32.bits


def test_gptq_zeroes_dead_inputs(activations):
    _, w, _, h = activations[0]
    h = h.clone()
    h[:, 5] = h[5, :] = 0  # input channel 5 never active
    q = gptq_quantize(w, h, W3G32)
    assert torch.isfinite(q).all() and (q[:, 5] == 0).all()


# --- pruning ------------------------------------------------------------------------------------


def _sparsegpt(w, h, pattern, fmt=None):
    pruned, kept = sparsegpt_prune(w, inverse_hessian_upper(h, 0.01), dead_inputs(h), pattern, fmt)
    if fmt is None:
        assert kept == int(torch.count_nonzero(pruned))
    return pruned


@pytest.mark.parametrize("pattern", [HALF, TWO_FOUR], ids=["50%", "2:4"])
def test_sparsegpt_and_wanda_beat_magnitude_on_output_error(activations, pattern):
    for name, w, x, h in activations:
        magnitude = output_error(w, w * layer_mask(w.abs(), pattern), x)
        assert output_error(w, _sparsegpt(w, h, pattern), x) < 0.8 * magnitude, name
        assert output_error(w, w * wanda_mask(w, x.square().sum(0), pattern), x) < magnitude, name


def _assert_pattern(w: torch.Tensor, pattern: SparsityPattern, per_row: bool = False) -> None:
    kept = w != 0
    if pattern.is_nm:
        assert (kept.reshape(w.shape[0], -1, pattern.m).sum(-1) == pattern.n).all()
    elif per_row:
        assert (kept.sum(1) == w.shape[1] - int(w.shape[1] * pattern.sparsity)).all()
    else:
        # SparseGPT's mask per block of 128 columns prunes every score <= the k-th smallest: k + 1 weights.
        blocks = kept.split(128, dim=1)
        assert w.numel() - kept.sum().item() == sum(int(b.numel() * pattern.sparsity) + 1 for b in blocks)


@pytest.mark.parametrize("method, per_row", [("sparsegpt", False), ("wanda", True)])
@pytest.mark.parametrize("pattern", [HALF, TWO_FOUR], ids=["50%", "2:4"])
def test_masks_have_exactly_the_asked_pattern(method, per_row, pattern, calibration):
    model = tiny_model()
    layers = compressible_layers(model)
    load_method(method, {}).compress(model, layers, Compression(quant=None, sparsity=pattern), calibration[:2])
    for layer in layers.values():
        _assert_pattern(layer.weight, pattern, per_row)


def test_sparsegpt_joint_quantization_keeps_the_mask_on_the_grid(activations):
    _, w, x, h = activations[0]
    q, kept = sparsegpt_prune(w, inverse_hessian_upper(h, 0.01), dead_inputs(h), TWO_FOUR, W3G32)
    assert ((q != 0).reshape(q.shape[0], -1, 4).sum(-1) <= 2).all()  # quantization may round a kept weight to 0
    assert kept == w.numel() // 2  # the mask's count, whatever rounded to 0
    groups = grouped(q, W3G32)
    assert max(len(torch.unique(g)) for g in groups.reshape(-1, groups.shape[-1])) <= 2**W3G32.bits
    # Joint beats pruning first and rounding the survivors afterwards.
    assert output_error(w, q, x) < output_error(w, fake_quantize(_sparsegpt(w, h, TWO_FOUR), W3G32), x)


# --- AWQ ----------------------------------------------------------------------------------------


def test_awq_with_unit_scales_and_no_clipping_is_rtn(calibration):
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(scaled_fake_quantize(w, torch.ones(128), W3G32), fake_quantize(w, W3G32))
    # Through the method: one grid point, alpha = 0, gives s = mean|x|^0 = 1.
    awq_model, rtn_model = tiny_model(), tiny_model()
    compression = Compression(quant=W3G32, sparsity=None)
    awq = load_method("awq", {"n_grid": 1, "duo_scaling": False, "clip": False})
    awq.compress(awq_model, compressible_layers(awq_model), compression, calibration[:2])
    load_method("rtn", {}).compress(rtn_model, compressible_layers(rtn_model), compression)
    for a, r in zip(awq_model.parameters(), rtn_model.parameters()):
        assert torch.equal(a, r)


def _awq(model, calibration, **options):
    """AWQ w3g32 on `model` in place; returns the method (its applied scales)."""
    awq = load_method("awq", options)
    awq.compress(model, compressible_layers(model), Compression(W3G32, None), calibration)
    return awq


def autoawq_best_scale(module, linears, x, kwargs, fmt, n_grid=20):
    """AutoAWQ's _search_best_scale / _compute_best_scale (duo scaling, its default), transcribed:
    the scale whose pseudo-quantized linears give the lowest MSE of `module`'s output on x."""
    weight = torch.cat([fc.weight for fc in linears], dim=0)
    w_scale = weight.abs().view(-1, fmt.group_size)
    w_scale = (w_scale / (w_scale.amax(dim=1, keepdim=True) + 1e-6)).view(weight.shape)
    w_mean = w_scale.mean(0)
    x_mean = x.abs().view(-1, x.shape[-1]).float().sum(0) / x.view(-1, x.shape[-1]).shape[0]
    first = lambda out: out[0] if isinstance(out, tuple) else out
    fp16_output = first(module(x, **kwargs))
    org_sd = {k: v.clone() for k, v in module.state_dict().items()}
    best_error, best_scales = float("inf"), None
    for ratio in range(n_grid):
        ratio = ratio / n_grid
        scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        scales = scales / (scales.max() * scales.min()).sqrt()
        for fc in linears:
            fc.weight.mul_(scales.view(1, -1))
            fc.weight.data = fake_quantize(fc.weight.data, fmt) / scales.view(1, -1)
        loss = (fp16_output - first(module(x, **kwargs))).float().pow(2).mean().item()
        if loss < best_error:
            best_error, best_scales = loss, scales.clone()
        module.load_state_dict(org_sd)
    return best_scales


def module_inputs(model, module, tokens):
    """(x, kwargs) of `module` in the float model's own forward over `tokens` (one batch)."""
    seen = {}

    def hook(m, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(tokens, use_cache=False)  # AutoAWQ drops use_cache: a KV cache would grow on every call
    handle.remove()
    return seen["x"], seen["kwargs"]


def test_awq_scales_are_autoawqs_searched_on_the_float_model(calibration):
    """With its defaults (duo scaling, 20 grid points), every block's q/k/v, gate/up and down scales
    are those AutoAWQ's search picks on the float model's inputs to the inspected module (attention,
    MLP, down_proj): the module's output is scored, and the float block feeds the next one."""
    tokens = calibration[:4]
    reference = tiny_model()
    awq = _awq(tiny_model(), tokens, clip=False)
    for i, layer in enumerate(find_blocks(reference)):
        attn, mlp = layer.self_attn, layer.mlp
        cases = [
            (attn, [attn.q_proj, attn.k_proj, attn.v_proj], "self_attn.q_proj"),
            (mlp, [mlp.gate_proj, mlp.up_proj], "mlp.gate_proj"),
            (mlp.down_proj, [mlp.down_proj], "mlp.down_proj"),
        ]
        for module, linears, first in cases:
            x, kwargs = module_inputs(reference, module, tokens)
            with torch.no_grad():
                expected = autoawq_best_scale(module, linears, x, kwargs, W3G32)
            (ours,) = [s for names, s in awq.scales.items() if names.startswith(f"model.layers.{i}.{first}")]
            torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def fold_by_hand(model, scales):
    """llm-awq's apply_scale with given scales: the previous operation divided, the linears multiplied."""
    for i, layer in enumerate(find_blocks(model)):
        attn, mlp = layer.self_attn, layer.mlp
        rules = [
            ("self_attn.q_proj", layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj]),
            ("self_attn.o_proj", attn.v_proj, [attn.o_proj]),
            ("mlp.gate_proj", layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj]),
            ("mlp.down_proj", mlp.up_proj, [mlp.down_proj]),
        ]
        for first, prev, linears in rules:
            s = next(s for names, s in scales.items() if names.startswith(f"model.layers.{i}.{first}"))
            if s is None:
                continue
            prev.weight.div_(s.view(-1, *[1] * (prev.weight.dim() - 1)))
            for fc in linears:
                fc.weight.mul_(s)


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_awq_model_is_previous_operation_scaled_and_linears_quantized(calibration, kv_heads):
    """Every scale is real: the AWQ model equals the float model with each previous operation's output
    divided by s (norm weights, v_proj / up_proj rows) and each linear's weight W diag(s) quantized
    by RTN. Under grouped-query attention o_proj has no scale (v_proj has fewer rows than o_proj
    inputs), as in AutoAWQ; with as many KV heads as heads it has one."""
    tokens = calibration[:2]
    def build():
        config = {**TINY, "random": {**TINY["random"], "num_key_value_heads": kv_heads}}
        model = models.load_model(config, "cpu", torch.float32, 0)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "layernorm" in name:
                    param.copy_(torch.exp(torch.randn(param.shape, generator=gen)))
        return model

    compressed, by_hand = build(), build()
    awq = _awq(compressed, tokens, clip=False)
    o_scales = [s for names, s in awq.scales.items() if names.endswith("o_proj")]
    assert all(s is None for s in o_scales) if kv_heads == 2 else all(s is not None for s in o_scales)
    assert all(s is not None for names, s in awq.scales.items() if not names.endswith("o_proj"))
    with torch.no_grad():
        fold_by_hand(by_hand, awq.scales)
        for layer in compressible_layers(by_hand).values():
            layer.weight.copy_(fake_quantize(layer.weight, W3G32))
        torch.testing.assert_close(compressed(tokens).logits, by_hand(tokens).logits, rtol=1e-5, atol=1e-5)


# --- methods in the pipeline --------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options, compression",
    [
        ("gptq", {"act_order": True}, Compression(W3G32, None)),
        ("awq", {"quantizer": "gptq"}, Compression(W3G32, None)),
        ("sparsegpt", {}, Compression(W3G32, TWO_FOUR)),
        ("wanda", {"true_sequential": False}, Compression(None, HALF)),
    ],
    ids=["gptq-act-order", "awq-gptq", "sparsegpt-joint", "wanda"],
)
def test_a_seed_makes_results_bit_identical(method, options, compression):
    tokenizer = models.byte_tokenizer()

    def run(seed):
        model = tiny_model()
        tokens = data.calibration_windows(tokenizer, "pydoc", n_samples=2, seqlen=64, seed=seed)
        load_method(method, options).compress(model, compressible_layers(model), compression, tokens)
        return [p.clone() for p in model.parameters()]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize(
    "method, options, compression",
    [
        ("gptq", {}, Compression(None, HALF)),  # GPTQ does not prune
        ("gptq", {}, Compression(None, None)),  # ... and needs bits < 16
        ("awq", {}, Compression(W3G32, TWO_FOUR)),
        ("wanda", {}, Compression(W3G32, None)),  # a pruner needs sparsity
        ("sparsegpt", {}, Compression(W3G32, None)),
        ("gptq", {"damp": 0}, None),
        ("awq", {"quantizer": "hqq"}, None),
    ],
)
def test_combinations_a_method_cannot_do_are_rejected_at_config_time(method, options, compression):
    with pytest.raises(ConfigError):
        load_method(method, options).check(compression)


@pytest.mark.parametrize("name", list(CLI_RUNS))
def test_cli_end_to_end(name, cli_runs):
    proc, root = cli_runs
    assert proc.wait(timeout=300) == 0, (root / "cli.log").read_text()
    (path,) = (root / name / "runs").glob("*.json")
    record = json.loads(path.read_text())
    config, stats = record["config"], record["stats"]
    assert record["status"] == "ok" and record["error"] is None
    assert config["method"]["name"] == CLI_RUNS[name][0].split("=")[1]
    assert config["calib"] | {"dataset": "pydoc", "n_samples": 4, "seqlen": 64, "seed": 0} == config["calib"]
    assert 1 < record["metrics"]["pydoc/ppl"] < 1000 and math.isfinite(record["metrics"]["pydoc/ppl"])
    assert stats["compressed_layers"] == 14
    if config["sparsity"]:
        # Counted from the mask, also when quantization (joint or after) rounds kept weights to 0.
        assert config["sparsity"] == 0.5 and stats["sparsity"] == pytest.approx(0.5, abs=1e-3)  # SparseGPT: +1 per block
    assert 0 < stats["bits_per_weight"] < 16
