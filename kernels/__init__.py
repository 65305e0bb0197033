"""Kernel backends: each file replaces a compressed nn.Linear by its real packed form and runs it.

  bf16      the dense baseline (cuBLAS)
  intq      our Triton kernels for 2/3/4/8-bit group-wise integer weights (RTN, GPTQ, AWQ, HQQ, int8)
  sparse24  2:4 semi-structured sparsity through torch's cuSPARSELt path
  sparse24_intq  2:4 sparse weights whose kept half is 2/4/8-bit integers (SparseGPT 2:4 + bits), ours
  nf4       NF4 / FP4 through bitsandbytes

`choose` picks the backend a compression needs, or says why none exists; `convert` swaps every
compressed layer and refuses (ValueError) when a layer's weights are not what the backend packs, so a
latency is never measured on weights other than the compressed model's. Each backend has
`convert(linear, compression, method_options) -> (module, ||W_packed - W|| / ||W||)`; a backend with
`concatenate(modules) -> module | None` (bf16, intq) also gets sibling projections that read one input
(SIBLINGS: q, k, v; gate, up) fused into one layer, one launch where there were three or two, as
serving engines run them (vLLM's QKVParallelLinear, MergedColumnParallelLinear).
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from harness.config import Compression

# Largest ||W_packed - W|| / ||W|| accepted. On-grid weights stored in bf16 give 1e-3 to 2e-3 at 2-4 bits
# and up to ~5e-3 at 8 bits per channel (bf16's rounding is then coarser than the 8-bit grid, so such
# weights cannot be told from off-grid ones); weights off a 2-4 bit grid give 1e-1 and more.
WEIGHT_ERROR_LIMIT = 1e-2


def choose(compression: Compression, method: str, method_options: dict) -> tuple[ModuleType | None, str | None]:
    """(backend module, None) or (None, why no real kernel runs this compression)."""
    from harness.kernels import bf16, intq, nf4, sparse24, sparse24_intq

    quant, pattern = compression.quant, compression.sparsity
    if pattern is not None and not (pattern.is_nm and (pattern.n, pattern.m) == (2, 4)):
        return None, f"sparsity_pattern={pattern.name}: only 2:4 sparsity has a GPU kernel (cuSPARSELt)"
    if pattern is not None and quant is not None:
        reason = sparse24_intq.unsupported_reason(quant.bits, quant.group_size)
        return (None, reason) if reason else (sparse24_intq, None)
    if pattern is not None:
        return sparse24, None
    if quant is None:
        return bf16, None
    if method == "bnb" and method_options.get("quant_type", "nf4") != "int8":
        return nf4, None
    reason = intq.unsupported_reason(quant.bits, quant.group_size)
    if method == "hqq" and quant.group_size != -1 and method_options.get("axis", 0) == 0:
        reason = "method=hqq axis=0 groups strided columns, not input columns; run with method.axis=1"
    return (None, reason) if reason else (intq, None)


def kernel_name(backend: ModuleType) -> tuple[str, str]:
    version = backend.kernel_version() if hasattr(backend, "kernel_version") else backend.KERNEL_VERSION
    return backend.NAME, version


def convert_layer(backend: ModuleType, linear: nn.Linear, compression: Compression, method_options: dict) -> nn.Module:
    layer, error = backend.convert(linear, compression, method_options)
    if error > WEIGHT_ERROR_LIMIT:
        raise ValueError(f"weights are not on the {backend.NAME} grid (relative error {error:.2g} > {WEIGHT_ERROR_LIMIT})")
    return layer


@torch.no_grad()
def convert(model: nn.Module, layers: dict[str, nn.Linear], backend: ModuleType, compression: Compression, method_options: dict) -> None:
    """Replace each of `layers` (name -> module of `model`) by its packed form, in place."""
    for name, linear in layers.items():
        try:
            packed = convert_layer(backend, linear, compression, method_options)
        except ValueError as err:
            raise ValueError(f"layer {name}: {err}") from None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, packed)
    if hasattr(backend, "concatenate"):
        fuse_siblings(model, set(layers), backend)


# Projections of one parent module that read the same input, in the transformers models the harness
# runs (Llama, Mistral, Qwen, Gemma, SmolLM2)
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SharedProduct:
    """A fused layer's output, computed by the first of its slices called with an input and handed to
    the others called with that same tensor (identity, not value: the model calls q, k and v on one
    tensor in a row); dropped once every slice has taken its part, so no activation outlives its step.
    torch.compile traces this into one call of the layer and views of its output."""

    def __init__(self, layer: nn.Module, widths: list[int]):
        self.layer, self.widths = layer, widths
        self.input, self.parts, self.pending = None, None, 0

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self.input is not x:
            self.input, self.parts, self.pending = x, self.layer(x).split(self.widths, dim=-1), len(self.widths)
        out = self.parts[index]
        self.pending -= 1
        if self.pending == 0:
            self.input = self.parts = None
        return out


class ProductSlice(nn.Module):
    """What was one of the siblings: its columns of the fused layer's output (a view)."""

    def __init__(self, shared: SharedProduct, index: int, in_features: int, out_features: int):
        super().__init__()
        self.shared, self.index = shared, index
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.part(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} of {self.shared.widths}, in_features={self.in_features}"


@torch.no_grad()
def fuse_siblings(model: nn.Module, converted: set[str], backend: ModuleType) -> None:
    """Each complete group of SIBLINGS among the `converted` layers becomes one layer, registered on
    their parent as q_proj_k_proj_v_proj (or gate_proj_up_proj), and a ProductSlice in each place."""
    for parent_name, parent in list(model.named_modules()):
        for group in SIBLINGS:
            if not all((f"{parent_name}.{child}" if parent_name else child) in converted for child in group):
                continue
            members = [getattr(parent, child) for child in group]
            fused = backend.concatenate(members) if len({m.in_features for m in members}) == 1 else None
            if fused is None:
                continue
            biases = [m.bias for m in members]
            if any(b is not None for b in biases):
                like = next(b for b in biases if b is not None)
                fused.bias = nn.Parameter(torch.cat([like.new_zeros(m.out_features) if b is None else b for m, b in zip(members, biases)]),
                                          requires_grad=False)
            parent.add_module("_".join(group), fused)
            shared = SharedProduct(fused, [m.out_features for m in members])
            for index, (child, member) in enumerate(zip(group, members)):
                setattr(parent, child, ProductSlice(shared, index, member.in_features, member.out_features))
