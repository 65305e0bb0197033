"""The dense baseline: weights stay as loaded."""
from harness.methods import Method


class Dense(Method):
    name = "none"

    def compress(self, model, layers, compression, calibration=None, device=None) -> None:
        pass


METHOD_CLASS = Dense
