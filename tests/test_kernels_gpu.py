"""The kernel backends on a CUDA GPU (skipped where none is present): each backend's output against the
float32 product with its dequantized weights (the simulated-compression reference), on fresh random
inputs, shapes that are not multiples of the block sizes, every launch configuration the tuner may pick (dequantize + cuBLAS in row chunks included: 1100 rows
of K=4096 make 2 chunks of 8 MiB).

Tolerance: relative Frobenius error 1e-2. The reference is exact float32; the kernels read bf16
activations, accumulate in float32 and round the output to bf16 (~3e-3 measured on the CPU interpreter);
a wrong code, scale or group index gives errors of order 1e-1 and above."""
import pytest
import torch

triton = pytest.importorskip("triton")

from harness import kernels, latency, models
from harness.config import Compression
from harness.kernels import intq, nf4, sparse24, sparse24_intq
from harness.numerics.quant import QuantFormat, fake_quantize
from harness.numerics.sparsity import nm_mask

pytestmark = pytest.mark.gpu
TOL = 1e-2


@torch.no_grad()
def packed(bits, group, symmetric, n, k):
    linear = torch.nn.Linear(k, n, bias=True, device="cuda", dtype=torch.bfloat16)
    linear.weight.copy_(fake_quantize(torch.randn(n, k, device="cuda") / k**0.5, QuantFormat(bits, group, symmetric)))
    layer, error = intq.PackedLinear.from_linear(linear, bits, group)
    assert error <= kernels.WEIGHT_ERROR_LIMIT
    return layer


def check(out, x, weight, bias=None):
    ref = x.float() @ weight.T + (0 if bias is None else bias.float())
    assert torch.isfinite(out).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() < TOL


@pytest.mark.parametrize("bits,group,symmetric,n,k", [(4, 128, False, 300, 512), (3, 64, True, 257, 384), (4, 128, True, 1100, 4096)])
@pytest.mark.parametrize("m", [1, 3, 16, 300])
@torch.no_grad()
def test_every_intq_configuration(bits, group, symmetric, n, k, m):
    layer = packed(bits, group, symmetric, n, k)
    weight = layer.dequantized()
    for kind, config in intq.candidates(m):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        try:
            out = intq._run(kind, config, x, layer)
        except triton.runtime.errors.OutOfResources:
            continue  # tiles too large for this GPU's shared memory: the tuner never picks it
        check(out, x, weight)


@pytest.mark.parametrize("bits,group,symmetric,n,k", [(2, 32, False, 100, 256), (8, -1, True, 130, 576), (3, -1, False, 77, 1000),
                                                      (4, 256, True, 64, 4096), (2, 128, False, 4096, 14336)])
@pytest.mark.parametrize("m", [1, 2, 16, 40, 2048])
@torch.no_grad()
def test_intq_tuned_path(bits, group, symmetric, n, k, m):
    layer = packed(bits, group, symmetric, n, k)
    x = torch.randn(m, 2 * k, device="cuda", dtype=torch.bfloat16)[:, :k]  # rows strided, as a slice of a wider tensor
    check(layer(x), x, layer.dequantized(), layer.bias)


@torch.no_grad()
def two_four_packed(bits, group, symmetric, n, k):
    w = torch.randn(n, k, device="cuda") / k**0.5
    linear = torch.nn.Linear(k, n, bias=True, device="cuda", dtype=torch.bfloat16)
    linear.weight.copy_(fake_quantize(w, QuantFormat(bits, group, symmetric)) * nm_mask(w.abs(), 2, 4))
    return sparse24_intq.SparsePackedLinear(linear, bits, group)


@pytest.mark.parametrize("bits,group,symmetric,n,k", [(4, 128, False, 300, 512), (2, -1, True, 77, 1000), (8, 64, False, 130, 576),
                                                      (4, 128, True, 4096, 14336)])
@pytest.mark.parametrize("m", [1, 3, 16, 300])
@torch.no_grad()
def test_every_two_four_intq_configuration_and_the_tuned_path(bits, group, symmetric, n, k, m):
    layer = two_four_packed(bits, group, symmetric, n, k)
    weight = layer.dequantized()
    x = torch.randn(m, 2 * k, device="cuda", dtype=torch.bfloat16)[:, :k]  # rows strided, as a slice of a wider tensor
    for kind, config in sparse24_intq.candidates(m):
        check(sparse24_intq._run(kind, config, x.contiguous(), layer), x, weight)
    check(layer(x), x, weight, layer.bias)


@pytest.mark.parametrize("m", [1, 16, 100])
@torch.no_grad()
def test_two_four_and_nf4(m):
    k, n = 512, 384
    w = torch.randn(n, k, device="cuda") / k**0.5
    linear = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    linear.weight.copy_(w * nm_mask(w.abs(), 2, 4))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    check(sparse24.convert(linear, None, {})[0](x), x, linear.weight.float())
    linear.weight.copy_(w)
    layer = nf4.FourBitLinear(linear, 64, "nf4")
    check(layer(x), x, layer.dequantized())


def test_converted_model_matches_simulated_and_is_timed():
    cfg = {"name": "tiny", "random": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                                      "num_attention_heads": 4, "num_key_value_heads": 2}}
    model = models.load_model(cfg, "cuda", torch.bfloat16, 0)
    compression = Compression(quant=QuantFormat(4, 64, False), sparsity=None)
    from harness.methods.rtn import RoundToNearest
    from harness import compress

    RoundToNearest().compress(model, compress.compressible_layers(model), compression)
    ids = torch.randint(model.config.vocab_size, (2, 64), device="cuda")
    with torch.no_grad():
        simulated = model(ids).logits.float()
        latency_dict = latency.measure_run(model, compression, {"name": "rtn"}, {"latency_prompt_len": 32, "latency_batch": 4})
        through_kernels = model(ids).logits.float()
    assert isinstance(model.model.layers[0].mlp.down_proj, intq.PackedLinear)
    assert isinstance(model.model.layers[0].mlp.gate_proj_up_proj, intq.PackedLinear)  # gate and up fused
    assert ((through_kernels - simulated).norm() / simulated.norm()).item() < 2e-2
    assert latency_dict["available"] and latency_dict["kernel"] == intq.NAME and latency_dict["compiled"] is True
    assert latency_dict["prefill_ms"] > 0 and set(latency_dict["decode_tokens_per_s"]) == {"1", "4"}
    assert 0 < latency_dict["weight_bytes"] < latency_dict["peak_gpu_bytes"]
