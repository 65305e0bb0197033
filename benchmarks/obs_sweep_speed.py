"""The OBS column sweep (methods/gptq.py `obs_sweep`) on one GPU at the shapes GPTQ sweeps in one
Llama-3-8B block: the Python column loop against the Triton block kernel (harness/numerics/obs_sweep_triton.py),
for GPTQ w4g128 and SparseGPT 50% unstructured. Random weights and a random SPD Hessian (the work does
not depend on the values). Each sweep is timed with CUDA events after a warm-up (Triton's compile):
the median of --repeats, the ratio, and whether both give the same weights (they must, bit for bit).
The sum over the shapes is the sweep's share of one decoder block's time.

    python benchmarks/obs_sweep_speed.py                 # both methods, every shape
    python benchmarks/obs_sweep_speed.py --configs       # also one block's kernel time per launch
                                                         # configuration (rows per program x warps)
"""
from __future__ import annotations

import argparse
import statistics

import torch

from harness.methods.gptq import ColumnQuantizer, inverse_hessian_upper, obs_sweep
from harness.numerics.obs_sweep_triton import sweep_block
from harness.numerics.quant import QuantFormat
from harness.numerics.sparsity import SparsityPattern

SHAPES = {  # what GPTQ sweeps at once: the linears that share an input are concatenated
    "q,k,v": (6144, 4096),
    "o": (4096, 4096),
    "gate,up": (28672, 4096),
    "down": (4096, 14336),
}
W4G128 = QuantFormat(4, 128, False)
BLOCK = 128


def problem(rows: int, cols: int):
    """W [rows, cols] and the upper Cholesky factor of the damped inverse of H = 2/n X^T X."""
    gen = torch.Generator("cuda").manual_seed(0)
    w = torch.randn(rows, cols, device="cuda", generator=gen)
    x = torch.randn(2048, cols, device="cuda", generator=gen) * torch.exp(torch.randn(cols, device="cuda", generator=gen))
    return w, inverse_hessian_upper(2 / x.shape[0] * x.T @ x, 0.01)


def sweep(method: str, w: torch.Tensor, hinv: torch.Tensor, use_triton: bool) -> torch.Tensor:
    if method == "gptq w4g128":
        return obs_sweep(w.clone(), hinv, BLOCK, ColumnQuantizer(W4G128, w), use_triton=use_triton)[0]
    return obs_sweep(w.clone(), hinv, BLOCK, pattern=SparsityPattern(0.5), use_triton=use_triton)[0]


def median_ms(run, repeats: int) -> float:
    run()  # warm-up: Triton compiles on the first launch
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def compare_paths(repeats_python: int, repeats_triton: int) -> None:
    print(f"| method | linear | shape | python ms | triton ms | ratio | same weights |\n|---|---|---|---|---|---|---|")
    for method in ("gptq w4g128", "sparsegpt 50%"):
        totals = [0.0, 0.0]
        for name, (rows, cols) in SHAPES.items():
            w, hinv = problem(rows, cols)
            same = torch.equal(sweep(method, w, hinv, False), sweep(method, w, hinv, True))
            python = median_ms(lambda: sweep(method, w, hinv, False), repeats_python)
            triton = median_ms(lambda: sweep(method, w, hinv, True), repeats_triton)
            totals = [totals[0] + python, totals[1] + triton]
            print(f"| {method} | {name} | {rows}x{cols} | {python:.1f} | {triton:.2f} | {python / triton:.0f}x | {'yes' if same else 'NO'} |", flush=True)
        print(f"| {method} | one decoder block | | {totals[0]:.1f} | {totals[1]:.2f} | {totals[0] / totals[1]:.0f}x | |", flush=True)


def compare_configs(repeats: int) -> None:
    """One block of 128 columns (GPTQ w4g128) per launch configuration, at each row count."""
    print("\n| rows | rows/program | warps | kernel us per block |\n|---|---|---|---|")
    for rows in sorted({rows for rows, _ in SHAPES.values()}):
        w, hinv = problem(rows, BLOCK)
        params = ColumnQuantizer(W4G128, w).block_params(w, 0, BLOCK)
        out = torch.empty_like(w)
        for per_program in (8, 16, 32):
            for warps in (2, 4, 8):
                ms = median_ms(lambda: sweep_block(w, hinv, out, params, None, per_program, warps), repeats)
                print(f"| {rows} | {per_program} | {warps} | {ms * 1000:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed Triton sweeps per shape (Python: a third, at least 2)")
    parser.add_argument("--configs", action="store_true", help="also time one block per kernel launch configuration")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    compare_paths(max(2, args.repeats // 3), args.repeats)
    if args.configs:
        compare_configs(args.repeats)


if __name__ == "__main__":
    main()
