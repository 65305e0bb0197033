"""Old vs new integer GEMV side by side, one GPU call: KERNEL_VERSION 2 (frozen in benchmarks/intq_v2.py)
and the current kernels/intq.py on the same codes, scales and offsets, next to the bf16 cuBLAS layer, at
the Llama-3-8B layer shapes and 1 and 16 tokens. At batch 1 it also times the v3 GEMV alone in each
configuration of intq.GEMV_CONFIGS and of --configs (BN, TT, warps; tried here before joining the tuner's set).

    python benchmarks/gemv_bench.py [--bits 4,3,2] [--tokens 1,16] [--group-size 128] [--out FILE]
        [--configs "16,32,4;8,32,2"]

Each call is the layer as the model runs it (the tuned choice of each version, shown; at 16 tokens the
tuners may pick their tensor-core GEMM). Timing as benchmarks/kernel_bench.py: each side captured in a
CUDA graph of many calls cycling through enough copies of the layer that the weights do not stay in the
60 MB L2, triton.testing.do_bench median. Before any timing, every candidate kernel of both versions is
compiled by a pool of processes (Triton's on-disk cache then serves the tuners), since compiling ~300
specializations one after another would take minutes. Relative errors are against the float32 product
with the dequantized weights.
"""
from __future__ import annotations

import argparse
import copy
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intq_v2  # noqa: E402  (the frozen baseline beside this script)
from kernel_bench import L2_BYTES, SHAPES, copy_bandwidth, graph_time_us  # noqa: E402

from harness import latency  # noqa: E402
from harness.kernels import intq  # noqa: E402

VERSIONS = {"v2": intq_v2, "v3": intq}


def random_layer(module, bits: int, n: int, k: int, group: int, seed: int):
    """A packed layer of `module`'s format with random codes, scales and offsets (for compiling)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    layout = module.Layout.of(bits, k, group)
    codes = torch.randint(0, 2**bits, (n, k), device="cuda", generator=g)
    groups = layout.groups if group != -1 else 1
    scale = torch.rand(n, groups, device="cuda", generator=g) / k
    offset = -scale * 2 ** (bits - 1)
    return module.PackedLinear(codes, scale, offset, layout)


def compile_candidates(task) -> str:
    """Worker: launch every candidate of one (version, bits, shape) once per token count (compiles it),
    and v3's extra GEMV configurations at one token."""
    version, bits, n, k, group, tokens, extra = task
    module = VERSIONS[version]
    layer = random_layer(module, bits, n, k, group, 0)
    start = time.time()
    for m in tokens:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        more = [("gemv", c) for c in extra] if version == "v3" and m == 1 else []
        for choice in module.candidates(m) + more:
            try:
                module._run(*choice, x, layer)
            except triton.runtime.errors.OutOfResources:
                pass
    torch.cuda.synchronize()
    return f"{version} w{bits} {n}x{k}: {time.time() - start:.0f} s"


def precompile(args) -> None:
    tasks = [(v, b, n, k, args.group_size, args.tokens, args.configs) for n, k in SHAPES for b in args.bits for v in VERSIONS]
    start = time.time()
    with mp.get_context("spawn").Pool(min(len(tasks), os.cpu_count() or 1)) as pool:
        for line in pool.imap_unordered(compile_candidates, tasks):
            print("compiled", line, flush=True)
    print(f"precompile: {len(tasks)} tasks in {time.time() - start:.0f} s", flush=True)


@torch.no_grad()
def fitted(bits: int, n: int, k: int, group: int, seed: int):
    """Codes, scale, offset of a random weight fake-quantized on the (bits, group) grid, as the harness fits them."""
    from harness.numerics.quant import QuantFormat, fake_quantize

    g = torch.Generator(device="cuda").manual_seed(seed)
    w = fake_quantize(torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k), QuantFormat(bits, group, False))
    codes, scale, offset, error = intq.fit_grid(w, intq.Layout.of(bits, k, group))
    return codes, scale, offset


def copies_of(layer) -> list:
    extra = min(63, math.ceil(3 * L2_BYTES / latency.resident_bytes(layer)) - 1)
    return [layer] + [copy.deepcopy(layer) for _ in range(extra)]


@torch.no_grad()
def table(args) -> list[str]:
    lines = ["| N x K | bits | M | bf16 us | v2 us | v3 us | v3 / v2 | v3 x bf16 | v3 GB/s | v3 % of bf16 GB/s | v2 err | v3 err | v2 choice | v3 choice |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    configs = ["", "v3 GEMV per configuration (BN, TT, warps), batch 1, us:"]
    for n, k in SHAPES:
        linear = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        bf16_copies = copies_of(linear)
        bf16_us, bf16_gbs = {}, {}
        for m in args.tokens:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16_us[m] = graph_time_us([lambda lay=lay: lay(x) for lay in bf16_copies])
            bf16_gbs[m] = 2 * (n * k + m * (n + k)) / bf16_us[m] / 1e3
        del bf16_copies, linear
        for bits in args.bits:
            codes, scale, offset = fitted(bits, n, k, args.group_size, n + k + bits)
            layers = {v: mod.PackedLinear(codes, scale, offset, mod.Layout.of(bits, k, args.group_size)) for v, mod in VERSIONS.items()}
            ref_w = layers["v3"].dequantized()
            assert torch.equal(ref_w, layers["v2"].dequantized())  # the same weights in both formats
            weight_bytes = latency.resident_bytes(layers["v3"])
            copies = {v: copies_of(layer) for v, layer in layers.items()}
            for m in args.tokens:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ref = x.float() @ ref_w.T
                us, err, choice = {}, {}, {}
                for v, layer in layers.items():
                    out = layer(x)  # tunes (eager) on first use
                    err[v] = ((out.float() - ref).norm() / ref.norm()).item()
                    us[v] = graph_time_us([lambda lay=lay: lay(x) for lay in copies[v]])
                    choice[v] = VERSIONS[v].tuned_choice(m, layer)
                if m == 1:  # every v3 GEMV configuration, for choosing the candidate set
                    per_config = []
                    for config in intq.GEMV_CONFIGS + args.configs:
                        t = graph_time_us([lambda lay=lay, c=config: intq._run("gemv", c, x, lay) for lay in copies["v3"]])
                        per_config.append(f"{config} {t:.1f}")
                    print(f"  v3 GEMV configs, {n}x{k} W{bits} M=1, us: " + "; ".join(per_config), flush=True)
                    configs.append(f"{n}x{k} W{bits}: " + "; ".join(per_config))
                gbs = (weight_bytes + 2 * m * (n + k)) / us["v3"] / 1e3
                line = (f"| {n}x{k} | {bits} | {m} | {bf16_us[m]:.1f} | {us['v2']:.1f} | {us['v3']:.1f} | {us['v2'] / us['v3']:.2f}x | "
                        f"{bf16_us[m] / us['v3']:.2f} | {gbs:.0f} | {100 * gbs / bf16_gbs[m]:.0f} | {err['v2']:.1e} | {err['v3']:.1e} | "
                        f"{choice['v2']} | {choice['v3']} |")
                print(line, flush=True)
                lines.append(line)
            del copies, layers
            torch.cuda.empty_cache()
    return lines + configs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(v) for v in s.split(",")]
    configs = lambda s: [tuple(ints(c)) for c in s.split(";") if c]
    parser.add_argument("--bits", type=ints, default=[4, 3, 2])
    parser.add_argument("--tokens", type=ints, default=[1, 16])
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--configs", type=configs, default=[], help="more GEMV configurations to time at batch 1")
    parser.add_argument("--no-precompile", action="store_true")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    if not args.no_precompile:
        precompile(args)
    bandwidth = copy_bandwidth()
    head = (f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}; copy bandwidth "
            f"{bandwidth:.0f} GB/s; group {args.group_size}, asymmetric; v2 = KERNEL_VERSION 2, v3 = {intq.KERNEL_VERSION}")
    print(head, flush=True)
    lines = [head, ""] + table(args)
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
