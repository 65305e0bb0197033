"""Sparsity masks, shared by every pruning method.

A mask is a bool tensor shaped like the weight, True where the weight is kept. Scores rank weights:
the lowest-scored ones are pruned (|W| for magnitude pruning, |W| * ||X|| for Wanda, ...).
N:M follows NVIDIA's convention: keep N of every M consecutive weights along the input dimension
(2:4 keeps 2 of 4, 50% sparsity).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparsityPattern:
    sparsity: float
    n: int | None = None  # N:M: keep n of every m
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"

    def index_bits_per_kept(self) -> float:
        """Metadata to locate the kept weights: log2(M) bits each for N:M (NVIDIA's 2:4 stores 2)."""
        return float((self.m - 1).bit_length()) if self.is_nm else 0.0


def parse_pattern(text: str) -> tuple[int, int] | None:
    """'unstructured' -> None; 'N:M' -> (N, M). Raises ValueError naming the bad text."""
    if text == "unstructured":
        return None
    parts = str(text).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"sparsity_pattern={text!r}: expected 'unstructured' or 'N:M' such as '2:4'")
    n, m = (int(p) for p in parts)
    if not 0 < n < m:
        raise ValueError(f"sparsity_pattern={text!r}: N:M needs 0 < N < M (keep N of every M weights)")
    return n, m


def lowest_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask pruning exactly the k lowest scores of the whole tensor (ties broken by position)."""
    keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
    if k > 0:
        keep[torch.argsort(score.flatten(), stable=True)[:k]] = False
    return keep.view_as(score)


def per_row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune int(sparsity * cols) lowest scores in each output row (Wanda's comparison group)."""
    k = int(score.shape[1] * sparsity)
    keep = torch.ones_like(score, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, torch.argsort(score, dim=1, stable=True)[:, :k], False)
    return keep


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest scores of every m consecutive input columns."""
    rows, cols = score.shape
    blocks = score.reshape(rows, cols // m, m)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(2, torch.topk(blocks, n, dim=2).indices, True)
    return keep.reshape(rows, cols)


def layer_mask(score: torch.Tensor, pattern: SparsityPattern, per_row: bool = False) -> torch.Tensor:
    """The mask a method asks for: N:M, or unstructured over the layer (or each row, for Wanda)."""
    if pattern.is_nm:
        return nm_mask(score, pattern.n, pattern.m)
    if per_row:
        return per_row_mask(score, pattern.sparsity)
    return lowest_k_mask(score, int(score.numel() * pattern.sparsity))
