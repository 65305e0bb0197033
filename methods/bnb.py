"""bitsandbytes formats, through the `bitsandbytes` package: NF4 / FP4 (4-bit, QLoRA's block-wise
absmax with a float32 absmax per block of `group_size`) and LLM.int8()'s weight format (8-bit,
per-row absmax). Weights are quantized and dequantized by bitsandbytes' own functions."""
import torch

from harness.config import ConfigError
from harness.methods import Method

FOUR_BIT = ("nf4", "fp4")
BLOCK_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes' 4-bit kernels accept


class BitsAndBytes(Method):
    name = "bnb"
    quantizes = True
    bits_range = (4, 8)

    def __init__(self, quant_type: str = "nf4") -> None:
        super().__init__(quant_type=quant_type)
        if quant_type not in (*FOUR_BIT, "int8"):
            raise ConfigError(f"method.quant_type={quant_type!r}: expected nf4, fp4 or int8")
        self.quant_type = quant_type

    def check(self, compression) -> None:
        super().check(compression)
        fmt = compression.quant
        if self.quant_type == "int8":
            if fmt.bits != 8 or fmt.group_size != -1 or not fmt.symmetric:
                raise ConfigError("method=bnb quant_type=int8 is per-row absmax: set bits=8 group_size=-1 symmetric=true")
        elif fmt.bits != 4 or fmt.group_size not in BLOCK_SIZES or not fmt.symmetric:
            raise ConfigError(
                f"method=bnb quant_type={self.quant_type} is 4-bit absmax: set bits=4 symmetric=true and "
                f"group_size to one of {', '.join(map(str, BLOCK_SIZES))}"
            )

    def group_param_bits(self, fmt) -> int:
        return 32  # a float32 absmax per block (4-bit) or per row (int8)

    @torch.no_grad()
    def compress(self, model, layers, compression, calibration=None, device=None) -> None:
        import bitsandbytes.functional as bnb

        for layer in layers.values():
            weight = layer.weight
            if self.quant_type == "int8":
                codes, row_absmax, _ = bnb.int8_vectorwise_quant(weight.half())
                restored = codes.float() * row_absmax.float()[:, None] / 127
            else:
                codes, state = bnb.quantize_4bit(
                    weight.float(), blocksize=compression.quant.group_size, quant_type=self.quant_type
                )
                restored = bnb.dequantize_4bit(codes, state)
            weight.copy_(restored.reshape(weight.shape))


METHOD_CLASS = BitsAndBytes
