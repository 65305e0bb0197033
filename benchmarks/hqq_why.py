"""Why HQQ trails RTN at w3g64 on SmolLM2 (issue 13, item 4): per-layer weight and output errors and
perplexity of RTN and HQQ variants, each made by the harness's own method adapters on the same layers.

Per layer, for each variant's dequantized weight Wq against the model's W (dW = Wq - W):
  l2      ||dW||_F / ||W||_F
  lp      sum |dW|^0.7 / sum |W|^0.7 (the norm HQQ's optimizer is named after)
  out     sqrt(tr(dW H dW^T) / tr(W H W^T)), H = X^T X over calibration activations X of that layer:
          the relative error of the layer's output X W^T on real inputs
  out_first the same on the first token of each window only (the attention sink)
  out_mean the same for the mean input only (||dW mu|| / ||W mu||): the error every token shares
  top_channel ||dW[:, c]|| / ||W[:, c]|| for the input channel c of largest mean square activation
          (SmolLM2 has a few channels 20-40x the median: their weights' errors dominate `out`);
          top_channel_activation / top_channel_weight: that channel's activation RMS and weight column
          norm over the median channel's (properties of the layer, the same for every variant)
  gain    <dW, W> / <W, W>: how much of the error is a rescaling of W (0 for an unbiased quantizer)
Perplexity: every compressible layer replaced by the variant, pydoc test windows (the first
--max-eval-tokens tokens), the harness's Perplexity task.

    OMP_NUM_THREADS=1 python benchmarks/hqq_why.py --bits 3 --out results/hqq_why_w3g64.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from harness.compress import compressible_layers
from harness.config import Compression
from harness.data import calibration_windows
from harness.methods import load_method
from harness.models import load_model, load_tokenizer
from harness.numerics.quant import QuantFormat
from harness.tasks.perplexity import Perplexity

REPO = Path(__file__).resolve().parents[1]
Q4_1_BLOCK = 32  # weights per block of the GGUF's Q4_1 format (one scale and one min each)
# name: (method, options, rescale). method None: the layer's own weight (no quantization). HQQ's options
# are the adapter's (conf/method/hqq.yaml); unset ones are the package's. rescale (diagnostics of the
# gain, not quantizers; each keeps the weight on a grid, only its scale changes): "remove_gain" divides
# by (1 + gain); a (method, options) pair multiplies by (1 + that quantizer's gain on the same layer).
HQQ_AXIS1 = ("hqq", {"axis": 1})
VARIANTS = {
    "rtn": ("rtn", {}, None),
    "hqq_axis1": ("hqq", {"axis": 1}, None),
    "hqq_axis0": ("hqq", {"axis": 0}, None),
    "hqq_axis1_no_opt": ("hqq", {"axis": 1, "optimize": False}, None),
    "hqq_axis0_no_opt": ("hqq", {"axis": 0, "optimize": False}, None),
    "hqq_axis1_no_opt_round_zero": ("hqq", {"axis": 1, "optimize": False, "round_zero": True}, None),
    "hqq_axis1_round_zero": ("hqq", {"axis": 1, "round_zero": True}, None),
    "hqq_axis1_lp1": ("hqq", {"axis": 1, "lp_norm": 1.0}, None),
    "hqq_axis1_lp2": ("hqq", {"axis": 1, "lp_norm": 2.0}, None),
    "hqq_axis1_iters1": ("hqq", {"axis": 1, "iters": 1}, None),
    "hqq_axis1_iters100": ("hqq", {"axis": 1, "iters": 100}, None),
    "hqq_axis1_beta1e3": ("hqq", {"axis": 1, "beta": 1e3}, None),
    "hqq_axis0_lp1": ("hqq", {"axis": 0, "lp_norm": 1.0}, None),
    "hqq_axis0_lp2": ("hqq", {"axis": 0, "lp_norm": 2.0}, None),
    "hqq_axis0_iters1": ("hqq", {"axis": 0, "iters": 1}, None),
    "hqq_axis0_beta1e3": ("hqq", {"axis": 0, "beta": 1e3}, None),
    "hqq_axis0_round_zero": ("hqq", {"axis": 0, "round_zero": True}, None),
    "hqq_axis1_float_zero": ("hqq", {"axis": 1, "round_zero": False}, None),
    "hqq_axis0_float_zero": ("hqq", {"axis": 0, "round_zero": False}, None),
    # One layer type from another variant (by the layer name's last part), the rest from the first.
    "hqq_axis1_but_v_proj_rtn": ("mix", {"rest": "hqq_axis1", "v_proj": "rtn"}, None),
    "rtn_but_v_proj_hqq_axis1": ("mix", {"rest": "rtn", "v_proj": "hqq_axis1"}, None),
    "hqq_axis1_gain_removed": ("hqq", {"axis": 1}, "remove_gain"),
    "hqq_axis1_no_opt_gain_removed": ("hqq", {"axis": 1, "optimize": False}, "remove_gain"),
    "rtn_with_hqq_axis1_gain": ("rtn", {}, HQQ_AXIS1),
    "dense_with_hqq_axis1_gain": (None, {}, HQQ_AXIS1),
}


def input_grams(model, layers: dict[str, torch.nn.Linear], windows: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per layer: (X^T X, sum of X, X0^T X0) over every token of `windows`, float64; X0: the first
    token of each window only (the attention sink, whose value every later token reads)."""
    stats: dict[str, list] = {}

    def hook(name):
        def accumulate(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            gram, total, first = stats.setdefault(name, [0, 0, 0])
            stats[name] = [gram + x.T @ x, total + x.sum(0), first + x[:1].T @ x[:1]]
        return accumulate

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for window in windows:
                model(window[None])
    finally:
        for h in handles:
            h.remove()
    return {name: tuple(values) for name, values in stats.items()}


def relative_output_error(w: torch.Tensor, dw: torch.Tensor, gram: torch.Tensor) -> float:
    return float((torch.trace(dw @ gram @ dw.T) / torch.trace(w @ gram @ w.T)).sqrt())


def layer_errors(w: torch.Tensor, wq: torch.Tensor, gram: torch.Tensor, total: torch.Tensor, first: torch.Tensor) -> dict[str, float]:
    w, dw = w.double(), wq.double() - w.double()
    power = torch.diagonal(gram)
    top = int(power.argmax())  # the input channel of largest mean square activation
    return {
        "top_channel": float(dw[:, top].norm() / w[:, top].norm()),
        "top_channel_activation": float((power[top] / power.median()).sqrt()),  # its RMS over the median channel's
        "top_channel_weight": float(w[:, top].norm() / w.norm(dim=0).median()),  # its column norm over the median column's
        "l2": float(dw.norm() / w.norm()),
        "lp": float(dw.abs().pow(0.7).sum() / w.abs().pow(0.7).sum()),
        "out": relative_output_error(w, dw, gram),
        "out_first": relative_output_error(w, dw, first),
        "out_mean": float((dw @ total).norm() / (w @ total).norm()),
        "gain": gain(w, wq),
    }


def gain(w: torch.Tensor, wq: torch.Tensor) -> float:
    w = w.double()
    return float(((wq.double() - w) * w).sum() / (w * w).sum())


def variant_weight(variant: str, fmt: QuantFormat, layer: torch.nn.Linear, name: str) -> torch.Tensor:
    method_name, options, rescale = VARIANTS[variant]
    if method_name == "mix":
        return variant_weight(options.get(name.rsplit(".", 1)[-1], options["rest"]), fmt, layer, name)
    w = layer.weight.detach()
    wq = w.clone() if method_name is None else quantized(method_name, options, fmt, layer)
    if rescale == "remove_gain":
        return wq / (1 + gain(w, wq))
    if rescale is not None:
        return wq * (1 + gain(w, quantized(*rescale, fmt, layer)))
    return wq


def quantized(method_name: str, options: dict, fmt: QuantFormat, layer: torch.nn.Linear) -> torch.Tensor:
    """The layer's weight as the harness's adapter for `method_name` leaves it (on a copy)."""
    method = load_method(method_name, dict(options))
    compression = Compression(quant=fmt, sparsity=None)
    method.check(compression)
    copy = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)
    copy.weight.data.copy_(layer.weight.data)
    method.compress(None, {"layer": copy}, compression)
    return copy.weight.detach()


@torch.no_grad()
def dither_q4_1(layers: dict[str, torch.nn.Linear], seed: int) -> None:
    """Add noise uniform in +-1/2 step of each weight's Q4_1 block (32 input columns, 16 levels from the
    block's min to its max): the weights no longer sit on a grid shared by a block."""
    generator = torch.Generator().manual_seed(seed)
    for layer in layers.values():
        blocks = layer.weight.data.view(-1, Q4_1_BLOCK)
        step = (blocks.amax(1, keepdim=True) - blocks.amin(1, keepdim=True)) / 15
        blocks += step * (torch.rand(blocks.shape, generator=generator) - 0.5)


@torch.no_grad()
def shrinkage_share(layers: dict[str, torch.nn.Linear], fmt: QuantFormat, axis: int) -> dict[str, float]:
    """How much of HQQ's lp shrinkage acts: the share of the min-max quantization errors (HQQ's starting
    point, groups as the package forms them) that the package's shrink_lp_op leaves nonzero, at its
    first beta (10) and at the beta of its 20th iteration (10 * 1.01^19), with its default p = 0.7."""
    from hqq.core.optimize import shrink_lp_op

    nonzero, total, largest = {10.0: 0, 10.0 * 1.01**19: 0}, 0, 0.0
    for layer in layers.values():
        w = layer.weight.detach().float()
        g = w.reshape(-1, fmt.group_size) if axis == 1 else w.reshape(fmt.group_size, -1)
        low, high = g.amin(axis, keepdim=True), g.amax(axis, keepdim=True)
        scale = fmt.maxq / (high - low)
        zero = -low * scale
        error = g - ((g * scale + zero).round().clamp(0, fmt.maxq) - zero) / scale
        for beta in nonzero:
            nonzero[beta] += int((shrink_lp_op(error.clone(), beta, 0.7) != 0).sum())
        total += error.numel()
        largest = max(largest, float(error.abs().max()))
    shares = {f"nonzero_share_beta_{beta:g}": count / total for beta, count in nonzero.items()}
    return shares | {"threshold_beta_10": 10.0 ** (-1 / 1.3), "largest_abs_error": largest}


@torch.no_grad()
def zero_offsets(layers: dict[str, torch.nn.Linear], fmt: QuantFormat, axis: int, round_zero: bool) -> dict[str, float]:
    """How far the package's optimized zero (Quantizer.quantize, its default optimizer) ends from an
    integer, in steps: at an integer zero 0.0 is a level of the group."""
    from hqq.core.quantize import Quantizer

    distances = []
    for layer in layers.values():
        _, meta = Quantizer.quantize(layer.weight.detach().float(), nbits=fmt.bits, group_size=fmt.group_size, axis=axis,
                                     round_zero=round_zero, bitpack=False, device="cpu")
        zero = meta["zero"].float().flatten()
        distances.append((zero - zero.round()).abs())
    distance = torch.cat(distances)
    return {"median": float(distance.median()), "share_below_0.1": float((distance < 0.1).double().mean())}


def summarize(per_layer: dict[str, dict[str, dict[str, float]]], reference: str) -> dict[str, dict[str, float]]:
    """Per variant and metric: the median over layers of variant/reference, and the share of layers
    where the variant's error is lower; gain: the median itself."""
    summary = {}
    for variant, layers in per_layer.items():
        row = {}
        for metric in ("l2", "lp", "out", "out_first", "out_mean", "top_channel"):
            ratios = torch.tensor([layers[n][metric] / per_layer[reference][n][metric] for n in layers])
            row[f"{metric}_median_ratio"] = float(ratios.median())
            row[f"{metric}_lower_share"] = float((ratios < 1).double().mean())
        row["gain_median"] = float(torch.tensor([m["gain"] for m in layers.values()]).median())
        summary[variant] = row
    return summary


def by_layer_type(per_layer: dict[str, dict[str, dict[str, float]]], reference: str) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant, per layer type (q_proj, ..., down_proj): the median over layers of variant/reference
    for each error metric, and the median of each layer property."""
    table = {}
    for variant, layers in per_layer.items():
        types: dict[str, list[str]] = {}
        for name in layers:
            types.setdefault(name.rsplit(".", 1)[-1], []).append(name)
        table[variant] = {}
        for kind, names in types.items():
            row = {}
            for metric in next(iter(layers.values())):
                values = [layers[n][metric] for n in names]
                if metric not in ("gain", "top_channel_activation", "top_channel_weight"):
                    values = [v / per_layer[reference][n][metric] for v, n in zip(values, names)]
                row[metric] = float(torch.tensor(values).median())
            table[variant][kind] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--calib-windows", type=int, default=4)
    parser.add_argument("--calib-seqlen", type=int, default=1024)
    parser.add_argument("--max-eval-tokens", type=int, default=8192, help="0: no perplexity")
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--dither", action="store_true",
                        help="first add uniform noise of one step of the GGUF's Q4_1 grid to every weight (breaks that grid)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if "rtn" not in args.variants:
        parser.error("--variants must include rtn (the reference of the ratios)")
    args.variants = ["rtn"] + [v for v in args.variants if v != "rtn"]

    model_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf/model/smollm2-135m.yaml"))
    tokenizer = load_tokenizer(model_cfg)
    model = load_model(model_cfg, "cpu", torch.float32, 0)
    layers = compressible_layers(model)
    if args.dither:
        dither_q4_1(layers, seed=0)
    fmt = QuantFormat(args.bits, args.group_size, False)
    shrinkage = {f"axis{axis}": shrinkage_share(layers, fmt, axis) for axis in (0, 1)}
    print("HQQ's lp shrinkage on the min-max errors:", json.dumps(shrinkage), flush=True)
    zeros = {f"axis{axis}_round_zero_{rz}": zero_offsets(layers, fmt, axis, rz) for axis in (0, 1) for rz in (False, True)}
    print("HQQ's optimized zero, distance from an integer (steps):", json.dumps(zeros), flush=True)
    windows = calibration_windows(tokenizer, "pydoc", args.calib_windows, args.calib_seqlen, seed=0)
    grams = input_grams(model, layers, windows)
    task = None
    if args.max_eval_tokens:
        task = Perplexity("pydoc", Perplexity.resolve(OmegaConf.to_container(OmegaConf.load(REPO / "conf/task/pydoc.yaml")),
                                                      {"seqlen": args.seqlen, "max_eval_tokens": args.max_eval_tokens}))
        task.prepare(tokenizer)

    original = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    per_layer, ppl, seconds = {}, {}, {}
    if task:
        ppl["dense"] = task.evaluate(model)[0]["pydoc/ppl"]
    for variant in args.variants:
        start = time.perf_counter()
        per_layer[variant] = {}
        for name, layer in layers.items():
            wq = variant_weight(variant, fmt, layer, name)
            per_layer[variant][name] = layer_errors(original[name], wq, *grams[name])
            layer.weight.data.copy_(wq)
        seconds[variant] = time.perf_counter() - start
        if task:
            ppl[variant] = task.evaluate(model)[0]["pydoc/ppl"]
        for name, layer in layers.items():
            layer.weight.data.copy_(original[name])
        print(variant, f"ppl {ppl.get(variant, float('nan')):.2f}", json.dumps({k: round(v, 4) for k, v in summarize({variant: per_layer[variant], "rtn": per_layer["rtn"]}, "rtn")[variant].items()}), flush=True)

    report = {
        "config": vars(args) | {"out": str(args.out), "variants_spec": {v: VARIANTS[v] for v in args.variants},
                                "calib_tokens": int(windows.numel()), "eval": task.info if task else None},
        "ppl": ppl,
        "hqq_shrinkage": shrinkage,
        "hqq_zero_distance_from_integer": zeros,
        "summary": summarize(per_layer, "rtn"),
        "by_layer_type": by_layer_type(per_layer, "rtn"),
        "per_layer": per_layer,
        "quantize_seconds": seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
