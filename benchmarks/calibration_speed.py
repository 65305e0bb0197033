"""Speed and memory of the layer-wise calibration engine at Llama-3-8B shape, on one GPU.

Builds a Llama with random weights in bfloat16 (hidden 4096, intermediate 14336, 32 layers, 32 heads,
8 KV heads, vocab 128256) in CPU memory, as the harness keeps a calibrated model, draws random
calibration tokens (128 x 2048), and runs GPTQ w4g128, AWQ w4g128, SparseGPT 50% and Wanda 50% with
their defaults through harness/numerics/calibration.py, which moves one block at a time to the GPU. Prints each
run's wall time and peak GPU memory (torch.cuda.max_memory_allocated) as it finishes, then the table
with the goals (GPTQ < 2 min, AWQ < 4 min, peak < 8 GiB). Random weights and tokens are enough: the
work per block does not depend on the values, so one model serves every run (each compresses the
previous run's output).

    python benchmarks/calibration_speed.py                  # the whole table on cuda
    python benchmarks/calibration_speed.py --on-gpu         # the model built on the GPU instead
    python benchmarks/calibration_speed.py --layers 4       # fewer blocks (time scales linearly)
    python benchmarks/calibration_speed.py --tiny           # 2-layer tiny shape: a check on CPU
"""
from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from harness.numerics.calibration import gram
from harness.compress import compressible_layers
from harness.config import Compression
from harness.methods import load_method
from harness.numerics.quant import QuantFormat
from harness.numerics.sparsity import SparsityPattern

LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
)
TINY = dict(
    hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512,
)
W4G128 = Compression(quant=QuantFormat(bits=4, group_size=128, symmetric=False), sparsity=None)
HALF = Compression(quant=None, sparsity=SparsityPattern(0.5))
RUNS = {  # name -> (method, Compression, goal in seconds or None)
    "gptq w4g128": ("gptq", W4G128, 120),
    "awq w4g128": ("awq", W4G128, 240),
    "sparsegpt 50%": ("sparsegpt", HALF, None),
    "wanda 50%": ("wanda", HALF, None),
}
PEAK_GOAL_GIB = 8


def build_model(shape: dict, layers: int | None, init: str, home: str, dtype: torch.dtype) -> torch.nn.Module:
    """The random model, initialized on `init` and kept on `home`. Initializing 8B parameters on the host
    CPU takes minutes (70 s for 4 blocks, 2026-12-01); on the GPU seconds, then one copy to the host."""
    config = LlamaConfig(**(shape | ({"num_hidden_layers": layers} if layers else {})))
    torch.manual_seed(0)
    with torch.device(init):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return model.to(home)


def measure(name: str, model: torch.nn.Module, device: str, tokens: torch.Tensor) -> dict:
    method_name, compression, goal = RUNS[name]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    engine = load_method(method_name, {}).compress(model, compressible_layers(model), compression, tokens, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else engine["calib_peak_rss_bytes"]
    gc.collect()
    return {"run": name, "wall_s": wall, "per_block_s": wall / engine["calib_blocks"], "peak_gib": peak / 2**30, "goal_s": goal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2-layer tiny shape and 8 x 128 tokens (a CPU check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--on-gpu", action="store_true", help="build the model on the device instead of in CPU memory")
    parser.add_argument("--layers", type=int, default=None, help="number of decoder blocks (default: the shape's)")
    parser.add_argument("--n-samples", type=int, default=None, help="calibration windows (default 128; --tiny 8)")
    parser.add_argument("--seqlen", type=int, default=None, help="tokens per window (default 2048; --tiny 128)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from: {', '.join(RUNS)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    shape = TINY if args.tiny else LLAMA3_8B
    n_samples = args.n_samples or (8 if args.tiny else 128)
    seqlen = args.seqlen or (128 if args.tiny else 2048)
    tokens = torch.randint(0, shape["vocab_size"], (n_samples, seqlen), generator=torch.Generator().manual_seed(0))
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    blocks = args.layers or shape["num_hidden_layers"]
    print(f"{time.strftime('%Y-%m-%d')} {'tiny' if args.tiny else 'Llama-3-8B'} shape, {blocks} blocks, {n_samples} x {seqlen} tokens, "
          f"{'bf16' if cuda else 'fp32'}, {device_name}, model {'on the device' if args.on_gpu else 'in CPU memory, one block on the device'}", flush=True)
    if cuda:
        time_gram(shape["intermediate_size"], seqlen, args.device)
    start = time.perf_counter()
    # bfloat16 as on the GPU; float32 for a CPU check (CPU bfloat16 kernels are many times slower).
    model = build_model(shape, args.layers, args.device, args.device if args.on_gpu else "cpu", torch.bfloat16 if cuda else torch.float32)
    print(f"model built in {time.perf_counter() - start:.0f} s", flush=True)
    peak = "peak GiB (cuda max allocated)" if cuda else "peak GiB (process RSS)"
    rows = []
    for name in args.runs.split(","):  # each row as soon as it is measured: a long run may be cut
        rows.append(measure(name.strip(), model, args.device, tokens))
        row = rows[-1]
        print(f"{row['run']:<16}{row['wall_s']:>10.1f} s wall{row['per_block_s']:>10.2f} s / block{row['peak_gib']:>10.2f} {peak}", flush=True)
    # The time goals are for the whole model: with --layers, judge the per-block time times every block.
    full = shape["num_hidden_layers"]
    print(f"\n| run | wall s ({blocks} blocks) | s / block | {peak} | goal ({full} blocks) |\n|---|---|---|---|---|")
    for row in rows:
        whole_s = row["per_block_s"] * full
        scaled = "" if blocks == full else f", {whole_s:.0f} s from s/block"
        goals = [f"< {row['goal_s'] / 60:.0f} min: {'met' if whole_s < row['goal_s'] else 'missed'}{scaled}"] if row["goal_s"] else []
        if cuda:
            goals.append(f"peak < {PEAK_GOAL_GIB} GiB: {'met' if row['peak_gib'] < PEAK_GOAL_GIB else 'missed'}")
        print(f"| {row['run']} | {row['wall_s']:.1f} | {row['per_block_s']:.2f} | {row['peak_gib']:.2f} | {'; '.join(goals) or '-'} |")


def time_gram(width: int, seqlen: int, device: str, repeats: int = 20) -> None:
    """One window's X^T X for the widest input (the MLP down projection), bfloat16 activations:
    the engine's tensor-core product (calibration.gram) against converting to float32 first."""
    x = torch.randn(seqlen, width, device=device).bfloat16()
    paths = {"bf16 x bf16 -> fp32": lambda: gram(x), "fp32 x fp32": lambda: x.float().T @ x.float()}
    times = {}
    for name, path in paths.items():
        path()
        samples = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            path()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        times[name] = statistics.median(samples)
        print(f"X^T X [{seqlen} x {width}] {name}: median {times[name]:.2f} ms over {repeats}", flush=True)
    print(f"  ratio fp32 / bf16: {times['fp32 x fp32'] / times['bf16 x bf16 -> fp32']:.1f}x", flush=True)


if __name__ == "__main__":
    main()
