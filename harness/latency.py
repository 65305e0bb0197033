"""Latency stage (latency=true): the compressed model on its real GPU kernels, timed.

After evaluation, every compressed linear is replaced by its packed form (harness.kernels picks the
backend; a compression with no real kernel, or weights that are not what the backend packs, is
recorded as unavailable with the reason: simulated compression is never timed). Then, with CUDA
graphs so that Python and launch overhead do not count:
  * prefill: one forward over `latency_prompt_len` tokens at batch 1 into a static KV cache;
  * decode: tokens/s at batch 1 and `latency_batch`, one token per sequence per step, greedy, static
    KV cache, the whole step (model, argmax, position update) captured in one graph and replayed;
  * peak GPU memory during those, and the bytes of the model's parameters and buffers on the GPU.
With `latency_compile` (default) the model's forward goes through torch.compile first (inductor, one
graph: the packed layers are one opaque operator each, harness::packed_product), so the norms, rotary
embedding, attention glue and residuals are fused; the CUDA graph then replays the compiled step.
Without it, transformers' eager operations are replayed one kernel each (about 3.2 ms a decode step on
a Llama-3-8B shape, H200: benchmarks/NOTES.md).
The result is the record's `latency` dict (CONTRACTS: available, reason, kernel, kernel_version,
device, compiled, compile_error, prompt_len, prefill_ms, decode_tokens_per_s {"1", "<batch>"}, peak_gpu_bytes,
weight_bytes).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from harness import compress
from harness.config import Compression, ConfigError

log = logging.getLogger("harness")
DECODE_STEPS = 32


SETTINGS = ("latency", "latency_prompt_len", "latency_batch", "latency_compile")


def settle(config: dict[str, Any]) -> None:
    """Before anything loads: latency=true needs a CUDA device and sane sizes. With latency=false the
    settings are dropped from the config, so they do not change the run id of quality-only runs."""
    if not isinstance(config.get("latency", False), bool):
        raise ConfigError(f"latency={config['latency']!r}: expected true or false")
    if not config.get("latency"):
        for key in SETTINGS:
            config.pop(key, None)
        return
    if config["device"] != "cuda":
        raise ConfigError(f"latency=true times real GPU kernels: needs device=cuda (got device={config['device']})")
    for key in ("latency_prompt_len", "latency_batch"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise ConfigError(f"{key}={config.get(key)!r}: must be a positive integer")
    if not isinstance(config.get("latency_compile", True), bool):
        raise ConfigError(f"latency_compile={config['latency_compile']!r}: expected true or false")


def unavailable(reason: str, device: str) -> dict[str, Any]:
    log.warning("latency unavailable: %s", reason)
    return {"available": False, "reason": reason, "kernel": None, "kernel_version": None, "device": device,
            "compiled": None, "compile_error": None, "prompt_len": None, "prefill_ms": None, "decode_tokens_per_s": None, "peak_gpu_bytes": None, "weight_bytes": None}


def measure_run(model: nn.Module, compression: Compression, method_cfg: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Convert `model` (in place) to its kernels and time it; the stage's one entry point."""
    from harness import kernels

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    options = {k: v for k, v in method_cfg.items() if k != "name"}
    backend, reason = kernels.choose(compression, method_cfg["name"], options)
    if backend is None:
        return unavailable(reason, device)
    try:
        kernels.convert(model, compress.compressible_layers(model), backend, compression, options)
    except ValueError as err:
        return unavailable(str(err), device)
    name, version = kernels.kernel_name(backend)
    return {"available": True, "reason": None, "kernel": name, "kernel_version": version, "device": device,
            **measure(model, config["latency_prompt_len"], config["latency_batch"], compiled=config.get("latency_compile", True))}


def measure(model: nn.Module, prompt_len: int, batch: int, steps: int = DECODE_STEPS, compiled: bool = True) -> dict[str, Any]:
    """Prefill, decode and memory, through torch.compile when `compiled`. A model torch.compile cannot
    take is timed uncompiled instead: `compiled: false` and the error in `compile_error`."""
    if compiled:
        try:
            with strict_compile():
                return {**_timed(model, torch.compile(model, dynamic=False), prompt_len, batch, steps), "compiled": True, "compile_error": None}
        except Exception as err:  # noqa: BLE001 - any compiler failure; the uncompiled timing still stands
            log.warning("latency: torch.compile failed (%s: %s); timing the uncompiled model", type(err).__name__, err)
            error = f"{type(err).__name__}: {err}"[:500]
    return {**_timed(model, model, prompt_len, batch, steps), "compiled": False, "compile_error": error if compiled else None}


def strict_compile():
    """Compiled code or an error: dynamo otherwise runs a frame eagerly, silently, once it has compiled
    it recompile_limit times (each new shape or model is one), and a timing so taken is not compiled."""
    return torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)


def _timed(model: nn.Module, forward: Callable, prompt_len: int, batch: int, steps: int) -> dict[str, Any]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    prefill_ms = prefill_latency_ms(model, forward, prompt_len)
    tokens = {str(b): decode_tokens_per_s(model, forward, b, prompt_len, steps) for b in sorted({1, batch})}
    return {"prompt_len": prompt_len, "prefill_ms": round(prefill_ms, 3), "decode_tokens_per_s": tokens,
            "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()), "weight_bytes": resident_bytes(model)}


def resident_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (shared ones once), packed sparse tensors and bitsandbytes'
    per-block absmax included."""
    seen, total = set(), 0
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [m.state.absmax for m in model.modules() if hasattr(getattr(m, "state", None), "absmax")]
    for t in tensors:
        parts = [getattr(t, a, None) for a in ("packed", "meta", "packed_t", "meta_t")] if hasattr(t, "packed") else [t]
        for p in parts:
            if p is not None and p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total


def graphed(step: Callable[[], None]) -> Callable[[], None]:
    """Capture `step` (already run eagerly, so every kernel is tuned and compiled) in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def elapsed_ms(fn: Callable[[], None], repeats: int = 1) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def new_cache(model: nn.Module, length: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=length)


def rewind(cache, length: int) -> None:
    """Set how many positions the static cache holds. transformers 5 keeps that count in a device tensor
    per layer (cumulative_length, which decides where the next keys go; cache_position is not used), so
    a graph replay advances it like an eager call does."""
    for layer in cache.layers:
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length.fill_(length)


@torch.no_grad()
def prefill_latency_ms(model: nn.Module, forward: Callable, prompt_len: int, repeats: int = 5) -> float:
    """Median over `repeats` graph replays of one batch-1 forward of `prompt_len` tokens (through
    `forward`, the model or its compiled form)."""
    device = next(model.parameters()).device
    cache = new_cache(model, prompt_len)
    ids = torch.randint(model.config.vocab_size, (1, prompt_len), device=device)
    positions = torch.arange(prompt_len, device=device)

    def step():
        rewind(cache, 0)
        forward(input_ids=ids, past_key_values=cache, cache_position=positions, position_ids=positions[None], use_cache=True)

    step()
    replay = graphed(step)
    return sorted(elapsed_ms(replay) for _ in range(repeats))[repeats // 2]


@torch.no_grad()
def decode_step(model: nn.Module, forward: Callable, batch: int, prompt_len: int, steps: int = DECODE_STEPS) -> tuple[Callable[[], None], Callable[[], None]]:
    """(step, restart) for greedy decoding after a random `prompt_len` prompt (already prefilled):
    step feeds the last tokens through `forward` (the model or its compiled form) into a static cache
    with room for `steps` more, takes the argmax and advances the position, all on the GPU (no host
    work, so it can be graphed); restart puts the cache and position back to the prompt's end."""
    device = next(model.parameters()).device
    cache = new_cache(model, prompt_len + steps + 2)
    prompt = torch.randint(model.config.vocab_size, (batch, prompt_len), device=device)
    model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(prompt_len, device=device), use_cache=True)
    token = torch.randint(model.config.vocab_size, (batch, 1), device=device)
    position = torch.full((1,), prompt_len, device=device)

    def step():
        logits = forward(input_ids=token, past_key_values=cache, cache_position=position,
                         position_ids=position.view(1, 1).expand(batch, 1), use_cache=True).logits
        token.copy_(logits[:, -1:].argmax(-1))
        position.add_(1)

    def restart():
        position.fill_(prompt_len)
        rewind(cache, prompt_len)

    return step, restart


@torch.no_grad()
def decode_tokens_per_s(model: nn.Module, forward: Callable, batch: int, prompt_len: int, steps: int = DECODE_STEPS) -> float:
    """Greedy decode: batch * steps tokens over the time of `steps` replays of the graphed decode_step."""
    step, restart = decode_step(model, forward, batch, prompt_len, steps)
    step()  # eager: tunes and compiles every kernel for this batch
    replay = graphed(step)
    restart()
    return batch * steps / (elapsed_ms(replay, steps) / 1e3)
