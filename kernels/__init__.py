"""Kernel backends for latency measurement (one file per backend). None has landed yet: the spine
measures quality only; latency with real GPU kernels comes with its own issue."""
