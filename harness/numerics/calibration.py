"""The layer-wise calibration engine shared by GPTQ, SparseGPT, Wanda and AWQ.

Decoder blocks are compressed one after another, as GPTQ and SparseGPT do:
  1. the calibration windows run through the embeddings (wherever the model is) up to the first block;
     the hidden states entering it and the arguments every block is called with (attention mask,
     position ids and embeddings...) are recorded, and the forward stops there;
  2. block i is moved to the compute `device`; its linear layers are compressed group by group, from
     statistics of their inputs (the Hessian X^T X, per-channel norms, mean |x|);
  3. the *compressed* block maps its inputs to the inputs of block i + 1, overwriting them in place
     (GPTQ, SparseGPT, Wanda); a method may instead advance them with the float block while it
     captures its statistics (AWQ); the block goes back home.
Only one block and one [n_samples, seqlen, hidden] tensor of hidden states live on `device` at a
time, so a model too big for the accelerator calibrates there with the rest of it in CPU memory.

Linears that read the same input tensor (q, k, v; gate, up) form a group: they share one set of input
statistics. With `true_sequential` the groups are compressed in execution order, and the block is
re-run to capture the inputs of each group after the groups before it are compressed (GPTQ's
--true-sequential); otherwise all groups see the inputs of the float block.
"""
from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from harness.methods import Method
from harness.progress import progress

log = logging.getLogger("harness")

STATISTICS = ("hessian", "sq_norm", "abs_mean")


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once what it ran for has been captured."""


class InputStats:
    """Statistics of the inputs X [tokens, in_features] read by one group of linears, accumulated over
    the calibration windows in float32 on the compute device. Only the `wanted` ones are kept: the
    Hessian of a 14336-wide input is 0.8 GB."""

    def __init__(self, wanted: Collection[str], width: int, device: torch.device) -> None:
        unknown = set(wanted) - set(STATISTICS)
        if unknown:
            raise ValueError(f"unknown input statistics {sorted(unknown)}; known: {STATISTICS}")
        zeros = partial(torch.zeros, dtype=torch.float32, device=device)
        self.hessian = zeros(width, width) if "hessian" in wanted else None  # 2/n_samples * X^T X
        self.sq_norm = zeros(width) if "sq_norm" in wanted else None  # ||X_j||_2^2 over all tokens
        self._abs_sum = zeros(width) if "abs_mean" in wanted else None
        self.samples = 0
        self.tokens = 0

    @property
    def abs_mean(self) -> torch.Tensor | None:
        """Mean |x_j| over all tokens (AWQ's activation scale)."""
        return None if self._abs_sum is None else self._abs_sum / self.tokens

    def add(self, x: torch.Tensor) -> None:
        batch = x.shape[0] if x.dim() > 2 else 1
        x = x.reshape(-1, x.shape[-1])
        if self.hessian is not None:
            # GPTQ's running rescale keeps H the mean over samples so far: no float32 overflow or
            # precision loss from summing hundreds of thousands of tokens into one matrix.
            self.hessian.mul_(self.samples / (self.samples + batch))
            self.hessian.add_(gram(x), alpha=2 / (self.samples + batch))
        x = x.float()
        if self.sq_norm is not None:
            self.sq_norm += x.square().sum(0)
        if self._abs_sum is not None:
            self._abs_sum += x.abs().sum(0)
        self.samples += batch
        self.tokens += x.shape[0]


def gram(x: torch.Tensor) -> torch.Tensor:
    """X^T X in float32 for X [tokens, width]. On CUDA, 16-bit activations are multiplied as they are,
    with a float32 result: a product of two bfloat16 / float16 numbers is exact in float32 and cuBLAS
    accumulates in float32, so this is the float32 product up to summation order, computed on tensor
    cores instead of float32 units (benchmarks/NOTES.md has both timings)."""
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(x.T, x, out_dtype=torch.float32)
    x = x.float()
    return x.T @ x


# A method's step: compress the linears of one group (name -> layer, on the compute device) from the
# statistics of the input they share.
GroupCompressor = Callable[[dict[str, nn.Linear], InputStats], None]


@dataclass
class BlockCall:
    """The arguments a block is called with besides its hidden states."""

    args: tuple
    kwargs: dict[str, Any]


# Compress one block (on the compute device) given its inputs [n_samples, seqlen, hidden], its call
# arguments and its groups of linears. Returns True if it has overwritten the inputs with the block's
# outputs (the inputs of the next block) itself; otherwise the engine runs the compressed block.
BlockCompressor = Callable[[nn.Module, torch.Tensor, "BlockCall", list[dict[str, nn.Linear]]], bool]


def groupwise(compress_group: GroupCompressor, stats: Collection[str] = (), true_sequential: bool = True) -> BlockCompressor:
    """The block step of GPTQ, SparseGPT and Wanda: `compress_group` on each group with the input
    `stats` it asks for (names from STATISTICS), captured per group after the groups before it are
    compressed (`true_sequential`) or all at once from the float block."""

    def compress_block(block, hidden, call, groups) -> bool:
        if true_sequential:
            for group in groups:
                compress_group(group, capture_stats(block, hidden, call, [group], stats)[0])
        else:
            for group, inputs in zip(groups, capture_stats(block, hidden, call, groups, stats)):
                compress_group(group, inputs)
        return False

    return compress_block


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: the nn.ModuleList holding the most parameters whose children each contain
    a Linear (found by structure, so any llama-, mistral-, qwen2- or gemma-style decoder works)."""
    def has_linear(module: nn.Module) -> bool:
        return any(isinstance(m, nn.Linear) for m in module.modules())

    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) and all(map(has_linear, m))]
    if not candidates:
        raise ValueError(f"{type(model).__name__}: no list of decoder blocks containing linear layers")
    return max(candidates, key=lambda blocks: sum(p.numel() for p in blocks.parameters()))


@torch.no_grad()
def calibrate(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    calibration: torch.Tensor,
    compress_block: BlockCompressor,
    *,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Compress `layers` block by block from `calibration` ([n_samples, seqlen] token ids), calling
    `compress_block` once per block (`groupwise` builds one from a per-group step). `device`
    (default: the model's) is where each block is compressed.

    Returns calib_s (wall time), calib_blocks, calib_tokens and the peak memory: calib_peak_cuda_bytes
    (torch.cuda.max_memory_allocated during calibration) on a CUDA device, else calib_peak_rss_bytes
    (the process's peak resident memory so far)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    blocks = find_blocks(model)
    names = _layer_names(blocks, layers)
    hidden, calls = capture_block_inputs(model, blocks, calibration, device)
    for i, (block, call) in enumerate(progress(zip(blocks, calls), "calibration blocks", len(blocks), unit="block")):
        block_start = time.perf_counter()
        home = next(block.parameters()).device
        block.to(device)
        groups = input_groups(block, hidden[:1], call, names)
        if not compress_block(block, hidden, call, groups):
            run_block(block, hidden, call)
        block.to(home)
        elapsed = time.perf_counter() - start
        log.info(
            "calibration block %d/%d: %.1f s, ETA %.0f s",
            i + 1, len(blocks), time.perf_counter() - block_start, elapsed / (i + 1) * (len(blocks) - i - 1),
        )
    result = {"calib_s": round(time.perf_counter() - start, 3), "calib_blocks": len(blocks), "calib_tokens": calibration.numel()}
    if device.type == "cuda":
        result["calib_peak_cuda_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        result["calib_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return result


def _layer_names(blocks: nn.ModuleList, layers: dict[str, nn.Linear]) -> dict[int, str]:
    """id(layer) -> name for the layers to compress; all of them must be inside the blocks."""
    in_blocks = {id(m) for m in blocks.modules()}
    outside = [name for name, layer in layers.items() if id(layer) not in in_blocks]
    if outside:
        raise ValueError(f"layers outside the decoder blocks cannot be calibrated layer-wise: {', '.join(outside)}")
    return {id(layer): name for name, layer in layers.items()}


def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, calibration: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, list[BlockCall]]:
    """The hidden states entering block 0 for every window ([n_samples, seqlen, hidden], model dtype,
    on `device`) and the arguments each block is called with.

    Every block's arguments are recorded, not only block 0's, because some models call blocks
    differently (Gemma-2/3 and Qwen2 give sliding-window layers their own mask, Gemma-3 its own
    rotary embeddings). For that the blocks become pass-throughs while the windows run (a GPTQ
    "Catcher" on every block) and the last one stops the forward, so no block computes and the output
    head never runs. All windows have the same length and no padding, so the first window's
    arguments are every window's."""
    n_samples = calibration.shape[0]
    hidden: list[torch.Tensor] = []
    calls: list[BlockCall | None] = [None] * len(blocks)
    memo: dict[int, Any] = {}

    def record(index: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        states, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        if index == 0:
            if not hidden:
                hidden.append(torch.empty((n_samples, *states.shape[1:]), dtype=states.dtype, device=device))
            hidden[0][sample] = states[0]
        if calls[index] is None:
            calls[index] = BlockCall(_to_device(rest, device, memo), _to_device(kwargs, device, memo))
        if index == len(blocks) - 1:
            raise _StopForward
        return states

    saved = [block.__dict__.get("forward") for block in blocks]  # accelerate hooks set one
    for index, block in enumerate(blocks):
        block.forward = partial(record, index)  # an instance attribute shadows the class's forward
    embed_device = model.get_input_embeddings().weight.device
    try:
        for sample in range(n_samples):
            try:
                model(calibration[sample : sample + 1].to(embed_device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for block, forward in zip(blocks, saved):
            if forward is None:
                del block.forward
            else:
                block.forward = forward
    return hidden[0], calls


def _to_device(value: Any, device: torch.device, memo: dict[int, Any]) -> Any:
    """Tensors in nested tuples / lists / dicts moved to `device`, each once (blocks share them)."""
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = (value, value.to(device))  # keep `value` alive: its id stays unique
        return memo[id(value)][1]
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device, memo) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device, memo) for k, v in value.items()}
    return value


def block_output(block: nn.Module, states: torch.Tensor, call: BlockCall) -> torch.Tensor:
    out = block(states, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> None:
    """hidden[j] = block(hidden[j]) for every window, one window at a time (as the arguments were
    recorded), in place: windows are independent, so no second buffer of hidden states is needed."""
    for j in range(hidden.shape[0]):
        hidden[j] = block_output(block, hidden[j : j + 1], call)[0]


def input_groups(
    block: nn.Module, sample: torch.Tensor, call: BlockCall, names: dict[int, str]
) -> list[dict[str, nn.Linear]]:
    """The block's layers to compress, grouped by the input tensor they read, groups in execution
    order. Found by running one window: layers whose inputs are the same memory (same address, shape
    and strides, every input kept alive meanwhile so no address is reused) read the same input."""
    seen: list[tuple[torch.Tensor, dict[str, nn.Linear]]] = []

    def note(layer: nn.Linear, args: tuple) -> None:
        x = args[0]
        for other, group in seen:
            if x.data_ptr() == other.data_ptr() and x.shape == other.shape and x.stride() == other.stride():
                group.setdefault(names[id(layer)], layer)
                return
        seen.append((x, {names[id(layer)]: layer}))

    targets = [m for m in block.modules() if id(m) in names]
    handles = [layer.register_forward_pre_hook(note) for layer in targets]
    try:
        block_output(block, sample, call)
    finally:
        for handle in handles:
            handle.remove()
    groups = [group for _, group in seen]
    grouped = {id(layer) for group in groups for layer in group.values()}
    missing = [names[id(layer)] for layer in targets if id(layer) not in grouped]
    if missing:
        raise ValueError(f"layers that did not run on a calibration window: {', '.join(missing)}")
    return groups


def capture_stats(
    block: nn.Module,
    hidden: torch.Tensor,
    call: BlockCall,
    groups: list[dict[str, nn.Linear]],
    wanted: Collection[str],
    advance: bool = False,
) -> list[InputStats]:
    """The input statistics of each group over every window. A group's input is read at its first
    layer; the forward stops at the last group's, since nothing after it is needed, unless `advance`:
    then each window runs through the whole block and hidden[j] is overwritten by its output."""
    found = []
    handles = []
    for k, group in enumerate(groups):
        first = next(iter(group.values()))
        inputs = InputStats(wanted, first.in_features, hidden.device)
        found.append(inputs)
        handles.append(first.register_forward_hook(partial(_accumulate, inputs, k == len(groups) - 1 and not advance)))
    try:
        for j in range(hidden.shape[0]):
            try:
                out = block_output(block, hidden[j : j + 1], call)
            except _StopForward:
                continue
            if advance:
                hidden[j] = out[0]
    finally:
        for handle in handles:
            handle.remove()
    return found


def _accumulate(inputs: InputStats, stop: bool, layer: nn.Module, args: tuple, output: torch.Tensor) -> None:
    inputs.add(args[0])
    if stop:
        raise _StopForward


class LayerwiseMethod(Method):
    """A method that compresses each group of linears from its calibration inputs, through `calibrate`.
    Subclasses set `stats` and implement `compress_group`."""

    needs_calibration = True
    stats: tuple[str, ...] = ()

    def __init__(self, true_sequential: bool = True, **options: Any) -> None:
        super().__init__(true_sequential=true_sequential, **options)
        self.true_sequential = bool(true_sequential)

    def compress(self, model, layers, compression, calibration=None, device=None) -> dict[str, float]:
        """As Method.compress; `device` (default: the model's) is where each block is compressed.
        Returns `calibrate`'s timing and peak memory."""
        return calibrate(model, layers, calibration, self.block_compressor(compression), device=device)

    def block_compressor(self, compression) -> BlockCompressor:
        """The step `calibrate` runs on each block: by default `compress_group` on each group."""
        return groupwise(partial(self.compress_group, compression=compression), self.stats, self.true_sequential)

    def compress_group(self, layers: dict[str, nn.Linear], inputs: InputStats, compression) -> None:
        raise NotImplementedError
