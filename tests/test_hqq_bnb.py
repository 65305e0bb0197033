"""HQQ and bitsandbytes adapters against their formats' definitions, and end to end."""
import pytest
import torch

from conftest import TINY, records, run_cli
from harness.config import Compression, ConfigError
from harness.methods import load_method
from harness.numerics.quant import QuantFormat
from harness.run import plan

# QLoRA's NormalFloat4 code book (Dettmers et al., 2023, appendix E).
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])


def compressed(name, options, fmt, weight):
    method = load_method(name, options)
    compression = Compression(quant=fmt, sparsity=None)
    method.check(compression)
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    method.compress(None, {"l": layer}, compression)
    return layer.weight.detach().double()


def test_nf4_values_are_block_absmax_times_the_code_book():
    torch.manual_seed(0)
    w = torch.randn(16, 256)
    out = compressed("bnb", {}, QuantFormat(4, 64, True), w).reshape(16, 4, 64)
    absmax = w.double().abs().reshape(16, 4, 64).amax(-1, keepdim=True)
    codes = out / absmax
    distance = (codes.unsqueeze(-1) - NF4.double()).abs().amin(-1)
    assert distance.max() < 1e-3  # every value is absmax x an NF4 level (absmax kept in float32)
    nearest = NF4.double()[(w.double().reshape(16, 4, 64) / absmax).unsqueeze(-1).sub(NF4.double()).abs().argmin(-1)]
    assert (codes - nearest).abs().max() < 1e-3  # and the nearest one


def test_int8_is_per_row_absmax_rounding():
    torch.manual_seed(1)
    w = torch.randn(8, 128)
    out = compressed("bnb", {"quant_type": "int8"}, QuantFormat(8, -1, True), w)
    w16 = w.half().double()
    absmax = w16.abs().amax(1, keepdim=True)
    reference = torch.round(w16 / absmax * 127) * absmax / 127
    assert (out - reference).abs().max() < 1e-3 * absmax.max()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_hqq_values_sit_on_one_affine_grid_per_group(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 128)
    along_rows = compressed("hqq", {"axis": 1}, QuantFormat(bits, 32, False), w).reshape(-1, 32)
    strided = compressed("hqq", {"axis": 0}, QuantFormat(bits, 32, False), w).reshape(32, -1).T
    for group in torch.cat([along_rows, strided]):
        levels = torch.unique(group)
        assert levels.numel() <= 2**bits
        steps = levels.diff()
        # Dequantized in float16 as the package does: each level carries float16 rounding (up to 2^-11 of
        # its size), so a ratio of two steps (each the difference of two levels) is off by a few such
        # roundings of the largest level, measured in steps; a non-affine set of levels is off by far more.
        rounding = 8 * 2**-11 * levels.abs().max() / steps.min()
        assert torch.allclose(steps / steps.min(), torch.round(steps / steps.min()), atol=float(rounding))
    rtn_error = (compressed("rtn", {}, QuantFormat(bits, 32, False), w) - w.double()).abs().mean()
    for out in (along_rows, strided.T):
        assert (out.reshape(8, 128) - w.double()).abs().mean() < 1.5 * rtn_error  # a sane quantizer, not noise


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_hqq_is_the_packages_hqqlinear_with_its_base_config(bits, axis):
    """The adapter's weight is what hqq's own HQQLinear(BaseQuantizeConfig(bits, 32, axis)) dequantizes
    to: its optimizer, its round_zero (4 bits: the initial zero rounded; the optimizer then moves it),
    a float16 scale and zero per group."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    torch.manual_seed(bits)
    w = torch.randn(16, 256) * torch.exp(torch.randn(1, 256))
    source = torch.nn.Linear(256, 16, bias=False)
    source.weight.data.copy_(w)
    package = HQQLinear(source, BaseQuantizeConfig(nbits=bits, group_size=32, axis=axis), compute_dtype=torch.float16, device="cpu")
    assert torch.equal(compressed("hqq", {"axis": axis}, QuantFormat(bits, 32, False), w), package.dequantize().double())


@pytest.mark.parametrize(
    "options,opt_params,round_zero",
    [
        ({"lp_norm": 2.0}, {"lp_norm": 2.0}, None),
        ({"lp_norm": 1.0, "beta": 1e3, "kappa": 1.05, "iters": 3}, {"lp_norm": 1.0, "beta": 1e3, "kappa": 1.05, "iters": 3}, None),
        ({"round_zero": True}, {}, True),
    ],
)
def test_hqq_optimizer_settings_are_the_packages_opt_params(one_thread, options, opt_params, round_zero):
    """method.lp_norm / beta / kappa / iters are the opt_params of the package's default optimizer
    (set the way the package lets one replace Quantizer.optimize_weights), method.round_zero its
    weight_quant_params' round_zero; the package's own optimizer is back in place afterwards."""
    from functools import partial

    from hqq.core.optimize import optimize_weights_proximal
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear, Quantizer

    torch.manual_seed(3)
    w = torch.randn(16, 256) * torch.exp(torch.randn(1, 256))
    ours = compressed("hqq", {"axis": 1} | options, QuantFormat(3, 32, False), w)
    assert Quantizer.optimize_weights is optimize_weights_proximal
    default = compressed("hqq", {"axis": 1}, QuantFormat(3, 32, False), w)
    assert not torch.equal(ours, default)  # the setting reached the package

    config = BaseQuantizeConfig(nbits=3, group_size=32, axis=1)
    if round_zero is not None:
        config["weight_quant_params"]["round_zero"] = round_zero
    source = torch.nn.Linear(256, 16, bias=False)
    source.weight.data.copy_(w)
    Quantizer.optimize_weights = partial(optimize_weights_proximal, opt_params={"lp_norm": 0.7, "beta": 10.0, "kappa": 1.01, "iters": 20} | opt_params)
    try:
        package = HQQLinear(source, config, compute_dtype=torch.float16, device="cpu")
    finally:
        Quantizer.optimize_weights = optimize_weights_proximal
    assert torch.equal(ours, package.dequantize().double())


@pytest.mark.parametrize(
    "options,message",
    [
        ({"iters": 0}, "method.iters=0: at least 1"),
        ({"lp_norm": 0}, "method.lp_norm=0"),
        ({"beta": -1.0}, "method.beta=-1.0"),
        ({"kappa": 0.5}, "method.kappa=0.5"),
    ],
)
def test_hqq_optimizer_settings_out_of_range_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        load_method("hqq", options)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method=bnb", "bits=5"], "4-bit absmax"),
        (["method=bnb", "group_size=32"], "group_size to one of 64"),
        (["method=bnb", "method.quant_type=int8", "bits=8"], "per-row absmax"),
        (["method=bnb", "method.quant_type=nf3"], "quant_type='nf3'"),
        (["method=hqq", "symmetric=true"], "method=hqq is asymmetric"),
        (["method=hqq", "bits=7"], "bits=7: method=hqq supports 2, 3, 4, 5, 6, 8"),
        (["method=hqq", "bits=4", "group_size=4"], "group_size=4: method=hqq needs a multiple of 8"),
    ],
)
def test_formats_the_packages_cannot_store_are_rejected(hydra_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan(hydra_cfg("model=tiny-random", *overrides))


def test_cli_end_to_end(tmp_path):
    run_cli(*TINY, "method=hqq", "bits=3", "group_size=32", results_dir=tmp_path)
    run_cli(*TINY, "method=bnb", results_dir=tmp_path)
    by_method = {r["config"]["method"]["name"]: r for r in records(tmp_path)}
    assert by_method["hqq"]["stats"]["bits_per_weight"] == 3 + 32 / 32
    assert by_method["bnb"]["stats"]["bits_per_weight"] == 4 + 32 / 64
    assert all(r["status"] == "ok" for r in by_method.values())
