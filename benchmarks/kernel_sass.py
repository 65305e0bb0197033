"""Instructions per weight in the batch-1 GEMV's inner loop, old kernel (KERNEL_VERSION 2, frozen in
benchmarks/intq_v2.py) vs the current one, from SASS compiled for sm_90 on this machine: no GPU needed
(Triton ships ptxas and cuobjdump).

    python benchmarks/kernel_sass.py [--shape 14336x4096] [--group 128] [--bits 4,3,2,8] [--dump DIR]

Each kernel is compiled with the specialization the launcher would give it (16-byte aligned pointers,
integer arguments divisible by 16 marked so, arguments equal to 1 made constants) for the shape's
launch (`intq.gemv_launch` for the new kernel; the old one's split-K rule for the old). The inner loop
is the code between the target of the kernel's backward branch and that branch; when the compiler
unrolled the loop away (few iterations), the whole kernel is counted. "per weight" divides by the
weights one thread handles in that stretch: BN * TT * TILE / (32 * num_warps) per iteration (GEMM,
--gemm-tokens M: BN * TILE / (32 * num_warps) weights a thread dequantizes per iteration, each used for
all M tokens). Columns:
all instructions, then classes (shifts: SHF and IMAD.SHL; int->float: I2F; fp32 math: FFMA/FMUL/FADD;
bf16/f16->f32: the PRMT/IMAD.U32/HADD2.F32 that do it; loads: LDG).
"""
from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intq_v2  # noqa: E402  (the frozen baseline beside this script)

from harness.kernels import intq, sparse24_intq  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
CLASSES = {
    "LOP3": r"^LOP3", "shift": r"^(SHF|IMAD\.SHL|SHL|SHR)", "I2F": r"^I2F", "fp32": r"^(FFMA|FMUL|FADD)",
    "cvt": r"^(PRMT|IMAD\.U32|HADD2\.F32|F2F)", "LDG": r"^LDG", "int": r"^(IMAD|IADD3|LEA|ISETP|SEL|MOV)",
}


def ptr(dtype: str) -> tuple[str, str]:
    return ("ptr", f"*{dtype}")


def compile_kernel(fn, args: list, num_warps: int, num_stages: int = 3):
    """Compile `fn` for sm_90 with `args` in its argument order: ("ptr", "*type"), a run-time int (its value
    decides the launcher's specialization), ("unspecialized", value) for one in the kernel's
    do_not_specialize, or ("const", value) for a tl.constexpr."""
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, arg) in enumerate(zip(fn.arg_names, args)):
        if isinstance(arg, tuple) and arg[0] == "ptr":
            signature[name] = arg[1]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(arg, tuple) and arg[0] == "const":
            signature[name], constexprs[name] = "constexpr", arg[1]
        elif isinstance(arg, tuple) and arg[0] == "unspecialized":  # a do_not_specialize argument
            signature[name] = "i32"
        elif arg == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if arg % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})


def sass_of(compiled) -> tuple[list[str], str]:
    """(instruction lines with labels, resource usage line) via Triton's cuobjdump."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([str(cuobjdump), "-sass", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    usage = next((line.strip() for line in res.splitlines() if "REG:" in line), "")
    return sass.splitlines(), usage


INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def instructions(lines: list[str]) -> list[tuple[int, str]]:
    """(address, instruction text without predicate) of every instruction, NOPs dropped."""
    out = []
    for line in lines:
        m = INSTR.search(line)
        if m:
            text = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())
            if not text.startswith("NOP"):
                out.append((int(m.group(1), 16), text))
    return out


def inner_loop(instrs: list[tuple[int, str]]) -> tuple[list[str], bool]:
    """The instructions of the largest backward-branch loop, or all of them when there is none."""
    best = None
    for addr, text in instrs:
        m = re.match(r"BRA\s+(?:`\()?\.?(?:L_x_\d+|0x[0-9a-f]+)", text)
        target = re.search(r"0x([0-9a-f]+)", text)
        if m and target and int(target.group(1), 16) < addr:
            start = int(target.group(1), 16)
            body = [t for a, t in instrs if start <= a <= addr]
            if best is None or len(body) > len(best):
                best = body
    return (best, True) if best is not None else ([t for _, t in instrs], False)


def classify(body: list[str]) -> Counter:
    counts = Counter()
    for text in body:
        op = text.split()[0]
        for name, pattern in CLASSES.items():
            if re.match(pattern, op):
                counts[name] += 1
                break
    return counts


def new_kernel(bits: int, n: int, k: int, group: int, config: tuple):
    layout = intq.Layout.of(bits, k, group)
    grid, meta, warps = intq.gemv_launch(config, layout, n, 1)
    pdt = "fp32" if bits == 8 else "fp16"
    args = [ptr("bf16"), ptr("i32"), ptr(pdt), ptr(pdt), ptr("bf16"), ptr("fp32"), ptr("i32"), n, k, layout.tiles, layout.groups, layout.tiles_per_group, k,
            intq.MANTISSA_ONE] + [("const", v) for v in meta]
    bn, tt, _ = config
    per_iter = bn * tt * layout.tile / (32 * warps)
    return compile_kernel(intq._gemv_kernel, args, warps), per_iter, meta[4] * per_iter


def two_four_kernel(bits: int, n: int, k: int, group: int, config: tuple):
    """The 2:4 + integer GEMV; its weights a thread are dense ones (half of them kept)."""
    grid, meta, warps = sparse24_intq.gemv_launch(config, bits, n, k, group, 1)
    padded, slices, per_group = sparse24_intq.slicing(k, group)
    pdt = "fp32" if bits == 8 else "fp16"
    args = [ptr("bf16"), ptr("i32"), ptr("i32"), ptr(pdt), ptr(pdt), ptr("bf16"), ptr("fp32"), ptr("i32"), n, k, ("unspecialized", slices),
            padded // (per_group * sparse24_intq.SLICE), k, intq.MANTISSA_ONE] + [("const", v) for v in meta]
    bn, ts, _ = config
    per_iter = bn * ts * sparse24_intq.SLICE / (32 * warps)
    return compile_kernel(sparse24_intq._gemv_kernel, args, warps), per_iter, meta[3] * per_iter


def old_kernel(bits: int, n: int, k: int, group: int, config: tuple):
    layout = intq_v2.Layout.of(bits, k, group)
    bn, tt, warps = config
    grid_n = triton.cdiv(n, bn)
    split = intq_v2._splits(grid_n, layout.tiles // tt, intq_v2.GEMV_PROGRAMS)
    per_split = triton.cdiv(triton.cdiv(layout.tiles, split), tt) * tt
    split = triton.cdiv(layout.tiles, per_split)
    planes = intq_v2.PLANES[bits]
    pdt = "fp32" if bits == 8 else "fp16"
    out = ptr("fp32" if split > 1 else "bf16")
    args = [ptr("bf16"), ptr("i32"), ptr("i32"), ptr(pdt), ptr(pdt), out, n, k, layout.tiles, per_split, layout.groups,
            layout.tiles_per_group, k] + [("const", v) for v in (planes[0], planes[1] if len(planes) > 1 else 0, layout.words, bn, tt, split > 1)]
    per_iter = bn * tt * layout.tile / (32 * warps)
    return compile_kernel(intq_v2._gemv_kernel, args, warps), per_iter, per_split / tt * per_iter


def new_gemm(bits: int, n: int, k: int, group: int, config: tuple, m: int):
    layout = intq.Layout.of(bits, k, group)
    bm, bn = config[:2]
    (_, _, split), per_split, warps, stages = intq.gemm_launch(config, m, n, layout.tiles)
    pdt = "fp32" if bits == 8 else "fp16"
    args = [ptr("bf16"), ptr("i32"), ptr(pdt), ptr(pdt), ptr("fp32" if split > 1 else "bf16"), m, n, k, layout.tiles, layout.groups,
            layout.tiles_per_group, k, intq.FLOAT_2_23] + [("const", v) for v in (bits, layout.words, bm, bn, per_split, split > 1)]
    per_iter = bn * layout.tile / (32 * warps)
    return compile_kernel(intq._gemm_kernel, args, warps, stages), per_iter, per_split * per_iter


def old_gemm(bits: int, n: int, k: int, group: int, config: tuple, m: int):
    layout = intq_v2.Layout.of(bits, k, group)
    bm, bn, warps, stages = config[:4]
    split = intq_v2._splits(triton.cdiv(m, bm) * triton.cdiv(n, bn), layout.tiles, intq_v2.GEMM_PROGRAMS)
    per_split = triton.cdiv(layout.tiles, split)
    planes = intq_v2.PLANES[bits]
    pdt = "fp32" if bits == 8 else "fp16"
    args = [ptr("bf16"), ptr("i32"), ptr("i32"), ptr(pdt), ptr(pdt), ptr("fp32" if split > 1 else "bf16"), m, n, k, layout.tiles, per_split,
            layout.groups, layout.tiles_per_group, k] + [("const", v) for v in (planes[0], planes[1] if len(planes) > 1 else 0, layout.words, bm, bn, split > 1)]
    per_iter = bn * layout.tile / (32 * warps)
    return compile_kernel(intq_v2._gemm_kernel, args, warps, stages), per_iter, per_split * per_iter


def row(version, bits, config, compiled, per_iter, per_program_thread, dump):
    lines, usage = sass_of(compiled)
    instrs = instructions(lines)
    body, looped = inner_loop(instrs)
    weights = per_iter if looped else per_program_thread
    counts = classify(body)
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        (Path(dump) / f"{version}_w{bits}_{'x'.join(map(str, config))}.sass").write_text("\n".join(lines))
    regs, stack = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
    cells = [f"{counts[c] / weights:.2f}" for c in CLASSES]
    return (f"| {version} | W{bits} | {config} | {regs.group(1) if regs else '?'}/{stack.group(1) if stack else '?'} | {'loop' if looped else 'whole kernel'} "
            f"| {len(body)} | {weights:.0f} | **{len(body) / weights:.2f}** | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="14336x4096", help="N x K")
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--bits", default="4,3,2,8")
    parser.add_argument("--dump", default=None, help="write each kernel's SASS here")
    parser.add_argument("--gemm-tokens", type=int, default=0, help="also the tensor-core GEMM at this many tokens")
    parser.add_argument("--two-four", action="store_true", help="also the 2:4 + integer GEMV (its 2, 4 and 8 bits)")
    args = parser.parse_args(argv)
    n, k = map(int, args.shape.split("x"))
    print(f"triton {triton.__version__}, sm_90, {n}x{k}, group {args.group}, batch 1")
    head = ["version", "bits", "config (BN, TT, warps)", "regs/stack bytes", "counted", "instr", "weights/thread", "instr/weight"]
    print("| " + " | ".join(head + [f"{c}/w" for c in CLASSES]) + " |")
    print("|" + "---|" * (len(head) + len(CLASSES)))
    for bits in map(int, args.bits.split(",")):
        for config in intq_v2.GEMV_CONFIGS:
            print(row("v2", bits, config, *old_kernel(bits, n, k, args.group, config), args.dump), flush=True)
        for config in intq.GEMV_CONFIGS:
            print(row("v3", bits, config, *new_kernel(bits, n, k, args.group, config), args.dump), flush=True)
        for config in intq.GEMM_SMALL if args.gemm_tokens else []:
            m = args.gemm_tokens
            print(row(f"v2 GEMM M={m}", bits, config, *old_gemm(bits, n, k, args.group, config, m), args.dump), flush=True)
            print(row(f"v3 GEMM M={m}", bits, config, *new_gemm(bits, n, k, args.group, config, m), args.dump), flush=True)
        for config in sparse24_intq.GEMV_CONFIGS if args.two_four and bits in sparse24_intq.SUPPORTED_BITS else []:
            print(row("2:4", bits, config, *two_four_kernel(bits, n, k, args.group, config), args.dump), flush=True)


if __name__ == "__main__":
    main()
