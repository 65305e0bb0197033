"""Round-to-nearest quantization, group-wise, symmetric or asymmetric (GPTQ's quantizer conventions)."""
import torch

from harness.methods import Method
from harness.numerics.quant import fake_quantize


class RoundToNearest(Method):
    name = "rtn"
    quantizes = True

    @torch.no_grad()
    def compress(self, model, layers, compression, calibration=None, device=None) -> None:
        for layer in layers.values():
            layer.weight.copy_(fake_quantize(layer.weight, compression.quant))


METHOD_CLASS = RoundToNearest
