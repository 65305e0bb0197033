"""Kernel benchmark, one GPU call: every backend x bits x Llama-3-8B layer shape x tokens, then end-to-end
decode of a Llama-3-8B-shaped model (real shapes, random weights) per backend.

    python benchmarks/kernel_bench.py [--tokens 1,16,2048] [--bits 4,3,2,8] [--e2e-bits 4,3,2] [--no-layers] [--no-e2e]
        [--e2e-compile off,on] [--no-two-four] [--e2e-profile]

Layer timings: y = x W^T; each side captured in a CUDA graph of many calls and replayed
(triton.testing.do_bench, median), calls cycling through enough copies of the layer that the weights do
not stay in the 60 MB L2 between calls. Bytes = packed weights + group parameters + x + y, read or
written once; GB/s = bytes / time; "% copy" is that over the device-to-device copy bandwidth measured at
the start (bytes read + written). Every row also states the relative error of its output against the
float32 product with the dequantized weights (the simulated-compression reference).
End to end: harness.latency's graphed prefill and decode (static KV cache) on the converted model, with
the model's eager operations replayed (compile off) and/or through torch.compile first (on).
--e2e-profile adds where a batch-1 decode step's GPU time goes: the step run eagerly (not graphed; the
same kernels) under torch.profiler, kernel time per step by kind, next to the graphed step's time
(their difference: gaps between kernels, which the graph does not remove).
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import traceback

import torch
import triton

from harness import compress, kernels, latency
from harness.config import Compression
from harness.kernels import bf16, intq, nf4, sparse24, sparse24_intq
from harness.numerics.quant import QuantFormat, fake_quantize
from harness.numerics.sparsity import SparsityPattern, nm_mask

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (1024, 4096)]  # (N out, K in)
L2_BYTES = 60 * 2**20
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)


def graph_time_us(fns, warmup_ms: int = 25) -> float:
    """Median time of one call, the calls cycling through `fns`, inside a CUDA graph."""
    reps = max(20, len(fns))
    calls = [fns[i % len(fns)] for i in range(reps)]
    for f in fns[:2]:
        f()
    replay = latency.graphed(lambda: [f() for f in calls])
    return triton.testing.do_bench(replay, warmup=warmup_ms, rep=100, return_mode="median") * 1e3 / reps


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB, bytes read + written; a long warm-up lets the clocks rise first."""
    a = torch.empty(2**30, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    t = graph_time_us([lambda: b.copy_(a)], warmup_ms=1000)
    return 2 * a.numel() * 2 / t / 1e3  # GB/s


@torch.no_grad()
def make_layer(kind: str, bits: int, n: int, k: int, group: int, seed: int):
    """(module, float32 reference weight) for one backend."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)
    linear = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    fmt = QuantFormat(bits, group, False)
    if kind == "bf16":
        linear.weight.copy_(w)
        return linear, linear.weight.float()
    if kind.startswith("2:4+w"):  # 2:4 sparse, kept half quantized: what SparseGPT 2:4 with bits produces
        linear.weight.copy_(fake_quantize(w, fmt) * nm_mask(w.abs(), 2, 4))
        layer = sparse24_intq.SparsePackedLinear(linear, bits, group)
        return layer, layer.dequantized()
    if kind.startswith("2:4"):
        w = w * nm_mask(w.abs(), 2, 4)
        linear.weight.copy_(w)
        return sparse24.SemiSparseLinear(linear), linear.weight.float()
    if kind == "nf4":
        linear.weight.copy_(w)
        layer = nf4.FourBitLinear(linear, 64, "nf4")
        return layer, layer.dequantized()
    linear.weight.copy_(fake_quantize(w, fmt))
    layer, error = intq.PackedLinear.from_linear(linear, bits, group)
    assert error <= kernels.WEIGHT_ERROR_LIMIT, error
    return layer, layer.dequantized()


def rel_err(out, ref) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


@torch.no_grad()
def layer_table(args, bandwidth) -> list[dict]:
    rows, base = [], {}
    kinds = ["bf16"] + [f"w{b}g{args.group_size}" for b in args.bits] + ["nf4", "2:4", f"2:4+w4g{args.group_size}"]
    for n, k in SHAPES:
        for kind in kinds:
            bits = int(kind.split("w")[1].split("g")[0]) if "w" in kind else 16
            try:
                layer, ref_w = make_layer(kind, bits, n, k, args.group_size, seed=n + k)
            except Exception as err:  # a backend that cannot build here is reported, not hidden
                print(f"{kind} {n}x{k}: build failed: {type(err).__name__}: {err}")
                continue
            weight_bytes = latency.resident_bytes(layer)
            extra = min(63, math.ceil(3 * L2_BYTES / weight_bytes) - 1)
            copies = [layer] + [make_layer(kind, bits, n, k, args.group_size, seed=n + k + i)[0] for i in range(1, extra + 1)]
            for m in args.tokens:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                try:
                    err = rel_err(layer(x), x.float() @ ref_w.T)
                    us = graph_time_us([lambda lay=lay: lay(x) for lay in copies])
                except Exception as ex:
                    print(f"{kind} {n}x{k} M={m}: run failed: {type(ex).__name__}: {str(ex)[:300]}")
                    continue
                if kind == "bf16":
                    base[(n, k, m)] = us
                moved = weight_bytes + 2 * m * (n + k)
                choice = intq.tuned_choice(m, layer)
                rows.append(dict(kind=kind, n=n, k=k, m=m, us=us, gbs=moved / us / 1e3, pct=100 * moved / us / 1e3 / bandwidth,
                                 speedup=base[(n, k, m)] / us if (n, k, m) in base else float("nan"), err=err, choice=choice))
                r = rows[-1]
                print(f"{kind:>8} {n:>5}x{k:<5} M={m:<5} {us:8.1f} us {r['gbs']:7.0f} GB/s {r['pct']:5.1f}% x{r['speedup']:5.2f} err {err:.2e} {choice or ''}", flush=True)
            del copies, layer
            torch.cuda.empty_cache()
    return rows


def llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA3_8B)).to(torch.bfloat16)
    return model.eval()


@torch.no_grad()
def end_to_end(args) -> list[dict]:
    variants = [("bf16", None, None)] + [(f"w{b}g{args.group_size}", QuantFormat(b, args.group_size, False), None) for b in args.e2e_bits]
    if not args.no_two_four:
        variants += [("2:4", None, SparsityPattern(0.5, 2, 4)), (f"2:4+w4g{args.group_size}", QuantFormat(4, args.group_size, False), SparsityPattern(0.5, 2, 4))]
    rows = []
    for (name, fmt, pattern), compiled in itertools.product(variants, args.e2e_compile):
        torch._dynamo.reset()  # each variant compiles afresh: the last one's entries would count against the recompile limit
        try:
            model = llama(0)
            layers = compress.compressible_layers(model)
            for layer in layers.values():
                mask = nm_mask(layer.weight.abs(), 2, 4) if pattern is not None else None
                if fmt is not None:
                    layer.weight.copy_(fake_quantize(layer.weight, fmt))
                if mask is not None:  # the mask of the unquantized weights, as SparseGPT chooses it
                    layer.weight.mul_(mask)
            compression = Compression(quant=fmt, sparsity=pattern)
            backend, reason = kernels.choose(compression, "rtn", {})
            assert backend is not None, reason
            start = time.time()
            kernels.convert(model, layers, backend, compression, {})
            del layers
            convert_s = time.time() - start
            start = time.time()
            result = latency.measure(model, args.prompt_len, 16, steps=args.steps, compiled=compiled)
            tps = result["decode_tokens_per_s"]
            rows.append(dict(name=name, kernel=kernels.kernel_name(backend)[0], **result))
            if args.e2e_profile:
                forward = torch.compile(model, dynamic=False) if result["compiled"] else model
                kinds, top = profile_step(model, forward, args.prompt_len)
                rows[-1]["profile"] = print_profile(name, result["compiled"], kinds, top, 1e6 / tps["1"])
            print(f"e2e {name:>8} compile {'on ' if compiled else 'off'} ({time.time() - start:.0f} s): prefill {result['prefill_ms']:.1f} ms  decode b1 {tps['1']:.1f} tok/s  b16 {tps['16']:.1f} tok/s  "
                  f"weights {result['weight_bytes'] / 1e9:.2f} GB  peak {result['peak_gpu_bytes'] / 1e9:.2f} GB  (convert {convert_s:.0f} s)", flush=True)
        except Exception:
            print(f"e2e {name}: failed")
            traceback.print_exc()
        model = None
        torch.cuda.empty_cache()
    return rows


# Kernel kinds of a decode step, by kernel name (first match)
KINDS = [("packed linears (ours)", r"_gemv_kernel|_gemm_kernel|_dequant_kernel|_sum_splits_kernel"),
         ("cuBLAS / cuSPARSELt / bitsandbytes (bf16 linears, lm_head)", r"gemv|gemm|nvjet|sm90_xmma|cutlass|cusparse|kgemm|kdequant"),
         ("attention", r"flash|fmha|attention|sdpa"),
         ("inductor fused (norms, rotary, residuals, argmax)", r"^triton_"),
         ("other", r".")]


@torch.no_grad()
def profile_step(model, forward, prompt_len: int, repeats: int = 8) -> tuple[dict[str, tuple[float, float]], list[tuple[str, float]]]:
    """Per batch-1 decode step: {kind: (kernel us, kernels)} and the 8 costliest kernels (us a step)."""
    import re

    step, _ = latency.decode_step(model, forward, 1, prompt_len, steps=2 * repeats + 4)
    step()
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
    kinds = {kind: [0.0, 0.0] for kind, _ in KINDS}
    per_kernel = []
    for event in prof.key_averages():
        us = event.device_time_total / repeats
        if us <= 0 or event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        kind = next(k for k, pattern in KINDS if re.search(pattern, event.key))
        kinds[kind][0] += us
        kinds[kind][1] += event.count / repeats
        per_kernel.append((event.key[:90], us))
    return {k: tuple(v) for k, v in kinds.items()}, sorted(per_kernel, key=lambda kv: -kv[1])[:8]


def print_profile(name: str, compiled: bool, kinds: dict, top: list, step_us: float) -> list[str]:
    total = sum(us for us, _ in kinds.values())
    lines = [f"| {name} | {'on' if compiled else 'off'} | {kind} | {us:.0f} | {count:.0f} |" for kind, (us, count) in kinds.items()]
    lines.append(f"| {name} | {'on' if compiled else 'off'} | all kernels / graphed step / gaps | {total:.0f} / {step_us:.0f} / {step_us - total:.0f} | "
                 f"{sum(c for _, c in kinds.values()):.0f} |")
    print("\n".join(lines), flush=True)
    for key, us in top:
        print(f"    {us:8.1f} us  {key}", flush=True)
    return lines


def markdown(rows, e2e, bandwidth) -> str:
    lines = [f"copy bandwidth {bandwidth:.0f} GB/s; {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}", "",
             "| kernel | N x K | M | us | GB/s | % copy | x bf16 | rel. err |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['n']}x{r['k']} | {r['m']} | {r['us']:.1f} | {r['gbs']:.0f} | {r['pct']:.0f} | {r['speedup']:.2f} | {r['err']:.1e} |")
    if e2e:
        lines += ["", "| model | kernel | compile | prefill ms | decode tok/s b1 | b16 | weights GB | peak GB |", "|---|---|---|---|---|---|---|---|"]
        for r in e2e:
            t = r["decode_tokens_per_s"]
            lines.append(f"| {r['name']} | {r['kernel']} | {'on' if r['compiled'] else 'off'} | {r['prefill_ms']:.1f} | {t['1']:.1f} | {t['16']:.1f} | {r['weight_bytes'] / 1e9:.2f} | {r['peak_gpu_bytes'] / 1e9:.2f} |")
        profiles = [line for r in e2e for line in r.get("profile", [])]
        if profiles:
            lines += ["", "Batch-1 decode step, GPU time by kernel kind (us a step; kernels a step):", "",
                      "| model | compile | kind | us | kernels |", "|---|---|---|---|---|"] + profiles
    return "\n".join(lines)


def on_off_list(text: str) -> list[bool]:
    words = text.split(",")
    if not words or set(words) - {"on", "off"}:
        raise argparse.ArgumentTypeError(f"{text!r}: expected off, on or off,on")
    return [w == "on" for w in words]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(v) for v in s.split(",")]
    parser.add_argument("--tokens", type=ints, default=[1, 16, 2048])
    parser.add_argument("--bits", type=ints, default=[4, 3, 2, 8])
    parser.add_argument("--e2e-bits", type=ints, default=[4, 3, 2])
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--no-layers", action="store_true")
    parser.add_argument("--e2e-compile", type=on_off_list, default=[False, True],
                        help="off, on or off,on: end to end without and/or with torch.compile")
    parser.add_argument("--no-two-four", action="store_true", help="end to end without the 2:4 variants")
    parser.add_argument("--e2e-profile", action="store_true", help="where a batch-1 decode step's GPU time goes")
    parser.add_argument("--out", default=None, help="write the markdown tables here")
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    rows = [] if args.no_layers else layer_table(args, bandwidth)
    e2e = [] if args.no_e2e else end_to_end(args)
    print(f"copy bandwidth again at the end {copy_bandwidth():.0f} GB/s", flush=True)
    table = markdown(rows, e2e, bandwidth)
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
