"""The shared numerics of the compression methods, apart from the pipeline's driver modules in harness/:
the layer-wise calibration engine with its input statistics (calibration), quantization formats and
fake quantization (quant), sparsity patterns and masks (sparsity), and the Triton block kernel of the
GPTQ / SparseGPT column sweep (obs_sweep_triton)."""
