"""AWQ (Lin et al., 2024): activation-aware weight quantization, as llm-awq and AutoAWQ publish it.

For each group of linears sharing an input (q, k, v; o; gate, up; down) a per-input-channel scale s
is searched over a grid, s = mean|x|^alpha / mean|w|^(1 - alpha) (AutoAWQ's "duo" scaling; with
duo_scaling false, s = mean|x|^alpha as in llm-awq), alpha in {0, 1/n, ..., (n-1)/n}, normalized to
sqrt(max s * min s) = 1. A candidate is scored, as in both references, by the squared error of the
output of the module the scaled linears feed, with their weights replaced by Q(W diag(s)) diag(s)^-1:
  * q, k, v: the attention module (the softmax couples q and k), on its float inputs;
  * gate, up: the MLP module (the product couples them), on its float inputs;
  * o, down: the linear itself, whose output error over all calibration tokens is exactly
    tr(dW H dW^T) with the Hessian H ~ X^T X.
The chosen s is then made real: the previous operation's output is divided by s (the input norm's
weight for q/k/v and gate/up, v_proj's output rows for o_proj, up_proj's rows for down_proj) and the
linear's weight multiplied by s, so the compressed model is "previous operation scaled, linear
quantized", storable as is. A group whose previous operation cannot absorb s keeps s = 1: o_proj under
grouped-query attention (v_proj has fewer output rows than o_proj has inputs; AutoAWQ skips it too),
or a previous operation this adapter does not know how to scale.

Then, as llm-awq's auto_clip, each layer but q and k gets its clipping range searched (max |w| of every
(row, group) shrunk by up to `max_shrink`), scored by that group's output error over all calibration
tokens (the matching diagonal block of H; llm-awq subsamples 512 tokens); and the scaled, clipped
weight is quantized with RTN (the paper's setting) or GPTQ.

All of a block's statistics come from the float block, and the next block's inputs are the float
block's outputs (llm-awq, AutoAWQ): quantization never feeds back into the search.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from harness.numerics.calibration import BlockCall, InputStats, LayerwiseMethod, block_output, capture_stats
from harness.config import ConfigError
from harness.methods.gptq import gptq_quantize
from harness.numerics.quant import QuantFormat, fake_quantize, grouped

log = logging.getLogger("harness")

# A linear whose input is (linear in) another linear's output rows, by the names Llama, Mistral,
# Qwen2 and Gemma use: o_proj reads attention(v_proj), down_proj reads act(gate_proj) * up_proj.
PREVIOUS_LINEAR = {"o_proj": "v_proj", "down_proj": "up_proj"}


def weight_scale(weight: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """mean|w| per input channel, each weight relative to the max |w| of its quantization group (AutoAWQ)."""
    w = grouped(weight, fmt).abs()
    return (w / (w.amax(-1, keepdim=True) + 1e-6)).reshape(weight.shape).mean(0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """s for one alpha (w_mean None: activation-only scaling), normalized to geometric-mean-of-range 1."""
    s = x_mean.pow(alpha)
    if w_mean is not None:
        s = s / (w_mean.pow(1 - alpha) + 1e-4)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def scaled_fake_quantize(weight: torch.Tensor, scales: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Q(W diag(s)) diag(s)^-1: the scaled layer, quantized, with the scale folded back into it."""
    return fake_quantize(weight * scales, fmt) / scales


def output_error(delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """||delta X||^2 up to a constant factor: tr(delta H delta^T)."""
    return ((delta @ hessian) * delta).sum()


def search_scales(weight, x_mean, fmt: QuantFormat, n_grid: int, duo_scaling: bool, error) -> torch.Tensor:
    """The candidate s whose RTN-quantized scaled weight has the lowest `error(s)`."""
    w_mean = weight_scale(weight, fmt) if duo_scaling else None
    best_error, best = float("inf"), None
    for k in range(n_grid):
        s = candidate_scales(x_mean, w_mean, k / n_grid)
        e = error(s)
        if e < best_error:
            best_error, best = e, s
    return best


def search_clip(weight: torch.Tensor, hessian: torch.Tensor, fmt: QuantFormat, n_grid: int, max_shrink: float) -> torch.Tensor:
    """`weight` clamped to +-c per (row, quantization group), c = max|w| * (1 - k/n_grid) for the k
    below max_shrink * n_grid that gives the lowest output error of that group's RTN weights."""
    w = grouped(weight, fmt)  # [rows, groups, group_len]
    groups, length = w.shape[1:]
    # Diagonal blocks of H: [groups, group_len, group_len].
    blocks = hessian.reshape(groups, length, groups, length).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    full = w.abs().amax(-1, keepdim=True)
    best_error = torch.full(w.shape[:2], float("inf"), device=w.device)
    best_limit = full.clone()
    for k in range(int(max_shrink * n_grid)):
        limit = full * (1 - k / n_grid)
        delta = w - grouped(fake_quantize(w.clamp(-limit, limit).reshape(weight.shape), fmt), fmt)
        error = torch.einsum("rgi,gij,rgj->rg", delta, blocks, delta)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_limit = torch.where(better.unsqueeze(-1), limit, best_limit)
    return w.clamp(-best_limit, best_limit).reshape(weight.shape)


@dataclass
class ModuleRecord:
    """Inputs and float outputs of the module a group feeds, on the first windows (the search set)."""

    module: nn.Module
    limit: int  # windows to keep
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    by_keyword: bool = False  # hidden states passed as hidden_states=
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def record_input(self, module, args, kwargs) -> None:
        if len(self.inputs) < self.limit:
            self.by_keyword = not args
            x = kwargs["hidden_states"] if self.by_keyword else args[0]
            self.inputs.append(x.detach().clone())
            self.args = args[1:]
            self.kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}

    def record_output(self, module, args, kwargs, output) -> None:
        if len(self.outputs) < self.limit:
            self.outputs.append(_first(output).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.by_keyword:
            return _first(self.module(*self.args, hidden_states=x, **self.kwargs))
        return _first(self.module(x, *self.args, **self.kwargs))

    def error(self) -> float:
        """Squared error of the module's current outputs against the float ones, summed over the windows."""
        return sum((self.forward(x) - y).float().square().sum().item() for x, y in zip(self.inputs, self.outputs))


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class AWQ(LayerwiseMethod):
    name = "awq"
    quantizes = True
    stats = ("hessian", "abs_mean")

    def __init__(
        self,
        n_grid: int = 20,
        duo_scaling: bool = True,
        clip: bool = True,
        clip_grid: int = 20,
        max_shrink: float = 0.5,
        clip_skip: list[str] | tuple[str, ...] = ("q_proj", "k_proj"),
        quantizer: str = "rtn",
        damp: float = 0.01,
        block_size: int = 128,
        search_tokens: int = 65536,
    ) -> None:
        if quantizer not in ("rtn", "gptq"):
            raise ConfigError(f"method=awq: quantizer={quantizer!r}, expected rtn or gptq")
        if n_grid < 1 or clip_grid < 1 or not 0 <= max_shrink < 1 or search_tokens < 1:
            raise ConfigError("method=awq: need n_grid >= 1, clip_grid >= 1, 0 <= max_shrink < 1, search_tokens >= 1")
        super().__init__(
            False, n_grid=n_grid, duo_scaling=duo_scaling, clip=clip, clip_grid=clip_grid, max_shrink=max_shrink,
            clip_skip=list(clip_skip), quantizer=quantizer, damp=damp, block_size=block_size, search_tokens=search_tokens,
        )
        self.n_grid, self.duo_scaling, self.clip = int(n_grid), bool(duo_scaling), bool(clip)
        self.clip_grid, self.max_shrink, self.clip_skip = int(clip_grid), float(max_shrink), set(clip_skip)
        self.quantizer, self.damp, self.block_size = quantizer, float(damp), int(block_size)
        self.search_tokens = int(search_tokens)
        self.scales: dict[str, torch.Tensor | None] = {}  # group (its layers' names joined by ",") -> s applied

    def block_compressor(self, compression):
        return lambda block, hidden, call, groups: self.compress_block(block, hidden, call, groups, compression.quant)

    @torch.no_grad()
    def compress_block(self, block: nn.Module, hidden: torch.Tensor, call: BlockCall, groups, fmt: QuantFormat) -> bool:
        previous = [previous_operation(block, hidden[:1], call, group) for group in groups]
        windows = max(1, math.ceil(self.search_tokens / hidden.shape[1]))
        records = [self._module_record(block, group, windows) for group in groups]
        handles = [h for r in records if r is not None for h in (
            r.module.register_forward_pre_hook(r.record_input, with_kwargs=True),
            r.module.register_forward_hook(r.record_output, with_kwargs=True),
        )]
        try:  # statistics of the float block; hidden becomes the float block's output
            stats = capture_stats(block, hidden, call, groups, self.stats, advance=True)
        finally:
            for handle in handles:
                handle.remove()
        hessians = []
        for group, inputs, record, prev in zip(groups, stats, records, previous):
            s = None
            if prev is not None:
                s = self._search(group, inputs, record, fmt)
                if not prev(s):
                    s = None
            self.scales[",".join(group)] = s
            for layer in group.values():
                if s is not None:
                    layer.weight.mul_(s.to(layer.weight.dtype))
            # The scaled layer W diag(s) reads X diag(s)^-1, whose Hessian is diag(s)^-1 H diag(s)^-1.
            hessians.append(inputs.hessian if s is None else inputs.hessian / torch.outer(s, s))
            if record is not None:  # the search set is no longer needed
                record.inputs.clear(), record.outputs.clear()
        for group, hessian in zip(groups, hessians):  # as llm-awq: every scale applied, then clip and quantize
            self._quantize(group, hessian, fmt)
        return True

    def _module_record(self, block: nn.Module, group: dict[str, nn.Linear], windows: int) -> ModuleRecord | None:
        """The module `group` feeds (the smallest one holding all its layers), when it is more than one linear."""
        module = feeding_module(block, group)
        return None if isinstance(module, nn.Linear) else ModuleRecord(module, windows)

    def _search(self, group: dict[str, nn.Linear], inputs: InputStats, record: ModuleRecord | None, fmt) -> torch.Tensor:
        layers = list(group.values())
        originals = [layer.weight.detach().clone() for layer in layers]
        w = torch.cat(originals).float()

        def module_error(s: torch.Tensor) -> float:
            for layer, original in zip(layers, originals):
                layer.weight.copy_(scaled_fake_quantize(original.float(), s, fmt))
            error = record.error()
            for layer, original in zip(layers, originals):
                layer.weight.copy_(original)
            return error

        def linear_error(s: torch.Tensor) -> float:
            return output_error(w - scaled_fake_quantize(w, s, fmt), inputs.hessian).item()

        error = linear_error if record is None else module_error
        return search_scales(w, inputs.abs_mean, fmt, self.n_grid, self.duo_scaling, error)

    def _quantize(self, group: dict[str, nn.Linear], hessian: torch.Tensor, fmt: QuantFormat) -> None:
        weights = [layer.weight for layer in group.values()]
        rows = [w.float() for w in weights]
        if self.clip:
            # AWQ leaves q and k unclipped: their output error is a poor proxy for the attention scores'.
            rows = [
                r if name.rsplit(".", 1)[-1] in self.clip_skip else search_clip(r, hessian, fmt, self.clip_grid, self.max_shrink)
                for name, r in zip(group, rows)
            ]
        scaled = torch.cat(rows)
        q = gptq_quantize(scaled, hessian, fmt, self.damp, self.block_size) if self.quantizer == "gptq" else fake_quantize(scaled, fmt)
        for weight, part in zip(weights, q.split([w.shape[0] for w in weights])):
            weight.copy_(part)


def feeding_module(block: nn.Module, group: dict[str, nn.Linear]) -> nn.Module:
    """The smallest submodule of `block` holding every layer of `group` (the block itself at worst)."""
    names = {id(m): name for name, m in block.named_modules()}
    paths = [names[id(layer)].split(".") for layer in group.values()]
    common = []
    for parts in zip(*paths):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return block.get_submodule(".".join(common))


def previous_operation(block: nn.Module, sample: torch.Tensor, call: BlockCall, group: dict[str, nn.Linear]):
    """A function folding a scale s into the operation whose output `group` reads (dividing that
    output by s) and returning whether it could; None if there is no such operation. The operation
    is the linear PREVIOUS_LINEAR names beside a lone o_proj / down_proj when its output rows match
    the layer's inputs, else a norm whose output is the group's very input tensor."""
    names = {id(m): name for name, m in block.named_modules()}
    first = next(iter(group.values()))
    parent, _, own = names[id(first)].rpartition(".")
    if len(group) == 1 and own in PREVIOUS_LINEAR:
        prev = block.get_submodule(f"{parent}.{PREVIOUS_LINEAR[own]}" if parent else PREVIOUS_LINEAR[own])
        return fold_into_rows(prev) if isinstance(prev, nn.Linear) and prev.out_features == first.in_features else None
    producer, x = producing_module(block, sample, call, first)
    if producer is None or getattr(producer, "weight", None) is None or producer.weight.shape != (first.in_features,):
        return None
    return partial(fold_into_norm, producer, sample_input=x)


def fold_into_rows(prev: nn.Linear):
    """Divide `prev`'s output rows (weight rows and bias) by s."""

    def fold(s: torch.Tensor) -> bool:
        prev.weight.div_(s.to(prev.weight.dtype).unsqueeze(1))
        if prev.bias is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
        return True

    return fold


def producing_module(block: nn.Module, sample: torch.Tensor, call: BlockCall, layer: nn.Linear):
    """The submodule whose output tensor is `layer`'s input, and that submodule's own input, found by
    running one window; (None, None) if no submodule's output is passed on unchanged."""
    outputs: list[tuple[torch.Tensor, nn.Module, torch.Tensor]] = []
    found = []

    def note_output(module, args, output):
        if isinstance(output, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
            outputs.append((output, module, args[0]))

    def note_input(module, args):
        x = args[0]
        found.extend((m, arg) for out, m, arg in outputs if out.data_ptr() == x.data_ptr() and out.shape == x.shape)

    handles = [m.register_forward_hook(note_output) for m in block.modules() if m is not block and m is not layer]
    handles.append(layer.register_forward_pre_hook(note_input))
    try:
        block_output(block, sample, call)
    finally:
        for handle in handles:
            handle.remove()
    return found[-1] if found else (None, None)


def fold_into_norm(norm: nn.Module, s: torch.Tensor, sample_input: torch.Tensor) -> bool:
    """Divide `norm`'s output by s through its weight (and bias): w / s for norms computing x_hat * w,
    (1 + w) / s - 1 for Gemma's x_hat * (1 + w). Each rule is checked on a real input; if neither
    reproduces output / s, the norm is restored and False returned."""
    weight, bias = norm.weight.detach().clone(), getattr(norm, "bias", None)
    bias = None if bias is None else bias.detach().clone()
    expected = (norm(sample_input).float() / s)
    for rule in (lambda w: w / s, lambda w: (1 + w) / s - 1):
        norm.weight.copy_(rule(weight.float()))
        if bias is not None:
            norm.bias.copy_(bias.float() / s)
        got = norm(sample_input).float()
        if torch.linalg.norm(got - expected) <= 1e-2 * torch.linalg.norm(expected):
            return True
    norm.weight.copy_(weight)
    if bias is not None:
        norm.bias.copy_(bias)
    log.warning("AWQ: cannot fold a scale into %s; its group keeps s = 1", type(norm).__name__)
    return False


METHOD_CLASS = AWQ
