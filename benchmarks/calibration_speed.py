"""Speed and memory of the layer-wise calibration engine at Llama-3-8B shape, on one GPU.

Builds a Llama with random weights in bfloat16 (hidden 4096, intermediate 14336, 32 layers, 32 heads,
8 KV heads, vocab 128256), draws random calibration tokens (128 x 2048), and runs GPTQ w4g128 and
SparseGPT 50% through harness/calibration.py, printing wall time and torch.cuda.max_memory_allocated
for each. Random weights and tokens are enough: the work per block does not depend on the values.

    python benchmarks/calibration_speed.py                  # on cuda, the model built on the GPU
    python benchmarks/calibration_speed.py --offload        # model in CPU memory, one block on the GPU
    python benchmarks/calibration_speed.py --layers 4       # fewer blocks (time scales linearly)
    python benchmarks/calibration_speed.py --small          # 2-layer tiny shape: a check on CPU
"""
from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from harness.calibration import gram
from harness.compress import compressible_layers
from harness.config import Compression
from harness.methods import load_method
from harness.quant import QuantFormat
from harness.sparsity import SparsityPattern

LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
)
TINY = dict(
    hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512,
)
RUNS = {  # name -> (method, Compression)
    "gptq w4g128": ("gptq", Compression(quant=QuantFormat(bits=4, group_size=128, symmetric=False), sparsity=None)),
    "sparsegpt 50%": ("sparsegpt", Compression(quant=None, sparsity=SparsityPattern(0.5))),
}


def build_model(shape: dict, layers: int | None, where: str) -> torch.nn.Module:
    config = LlamaConfig(**(shape | ({"num_hidden_layers": layers} if layers else {})))
    torch.manual_seed(0)
    with torch.device(where):  # initialized where it will live: 16 GB never passes through the host
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()


def measure(name: str, args, shape: dict, device: str, tokens: torch.Tensor) -> dict:
    method_name, compression = RUNS[name]
    model = build_model(shape, args.layers, "cpu" if args.offload else device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    engine = load_method(method_name, {}).compress(model, compressible_layers(model), compression, tokens, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else engine["calib_peak_rss_bytes"]
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"run": name, "wall_s": wall, "per_block_s": wall / engine["calib_blocks"], "peak_gib": peak / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="2-layer tiny shape and 8 x 128 tokens (a CPU check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--offload", action="store_true", help="keep the model in CPU memory; move one block at a time")
    parser.add_argument("--layers", type=int, default=None, help="number of decoder blocks (default: the shape's)")
    parser.add_argument("--n-samples", type=int, default=None, help="calibration windows (default 128; --small 8)")
    parser.add_argument("--seqlen", type=int, default=None, help="tokens per window (default 2048; --small 128)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from: {', '.join(RUNS)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    shape = TINY if args.small else LLAMA3_8B
    n_samples = args.n_samples or (8 if args.small else 128)
    seqlen = args.seqlen or (128 if args.small else 2048)
    tokens = torch.randint(0, shape["vocab_size"], (n_samples, seqlen), generator=torch.Generator().manual_seed(0))
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"{'tiny' if args.small else 'Llama-3-8B'} shape, {args.layers or shape['num_hidden_layers']} blocks, "
          f"{n_samples} x {seqlen} tokens, bf16, {device_name}{', offloaded' if args.offload else ''}")

    if args.device.startswith("cuda"):
        time_gram(shape["intermediate_size"], seqlen, args.device)
    peak = "peak GiB (cuda max allocated)" if args.device.startswith("cuda") else "peak GiB (process RSS)"
    for name in args.runs.split(","):  # each row as soon as it is measured: a long run may be cut
        row = measure(name.strip(), args, shape, args.device, tokens)
        print(f"{row['run']:<16}{row['wall_s']:>10.1f} s wall{row['per_block_s']:>10.2f} s / block"
              f"{row['peak_gib']:>10.2f} {peak}", flush=True)


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
