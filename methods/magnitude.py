"""Magnitude pruning: drop the smallest |W|, unstructured over each layer or N:M along the input dim."""
import torch

from harness.methods import Method
from harness.numerics.sparsity import layer_mask


class Magnitude(Method):
    name = "magnitude"
    prunes = True
    patterns = ("unstructured", "N:M")

    @torch.no_grad()
    def compress(self, model, layers, compression, calibration=None, device=None) -> None:
        for layer in layers.values():
            keep = layer_mask(layer.weight.abs().float(), compression.sparsity)
            layer.weight.mul_(keep)


METHOD_CLASS = Magnitude
