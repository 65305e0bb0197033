"""2:4 semi-structured sparse weights through torch's cuSPARSELt path (to_sparse_semi_structured).

Packing format (torch's, opaque): the kept half of the values (2 of every 4 consecutive input columns)
in the model dtype, plus 2-bit positions, compressed by cuSPARSELt into one buffer. cuSPARSELt needs a
token count that is a multiple of its tile, so a smaller batch is zero-padded to 32 rows; the dense
product is computed as (W_sparse @ x^T)^T by torch."""
from __future__ import annotations

import torch
from torch import nn

NAME = "cusparselt-2:4"
KERNEL_VERSION = f"torch-{torch.__version__}"
MIN_ROWS = 32


def is_two_four(weight: torch.Tensor) -> bool:
    if weight.shape[1] % 4:
        return False
    return bool((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1).le(2).all())


class SemiSparseLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        SparseSemiStructuredTensor._FORCE_CUTLASS = False  # the CUTLASS path runs on compute capability 8.x only
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        pad = -rows.shape[0] % MIN_ROWS
        y = nn.functional.linear(nn.functional.pad(rows, (0, 0, 0, pad)), self.weight)[: rows.shape[0]]
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def convert(linear: nn.Linear, compression, method_options: dict) -> tuple[nn.Module, float]:
    if not is_two_four(linear.weight):
        raise ValueError("the weight is not 2:4 sparse (more than 2 nonzeros in a block of 4 input columns)")
    return SemiSparseLinear(linear), 0.0
