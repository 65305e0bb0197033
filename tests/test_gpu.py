"""The pipeline on a CUDA GPU (skipped where none is present)."""
import pytest
import torch

from conftest import TINY, records, run_cli
from harness.config import Compression
from harness.methods.rtn import RoundToNearest
from harness.quant import QuantFormat

pytestmark = pytest.mark.gpu


def test_rtn_on_gpu_matches_cpu():
    torch.manual_seed(0)
    fmt = QuantFormat(bits=3, group_size=64, symmetric=False)
    cpu = torch.nn.Linear(512, 256, bias=False)
    gpu = torch.nn.Linear(512, 256, bias=False).cuda()
    gpu.weight.data.copy_(cpu.weight.data)
    for layer in (cpu, gpu):
        RoundToNearest().compress(None, {"l": layer}, Compression(quant=fmt, sparsity=None))
    step = cpu.weight.abs().max().item() / 7
    mismatch = (gpu.weight.cpu() - cpu.weight).abs()
    assert (mismatch > step * 1e-4).float().mean().item() < 1e-3  # only rounding ties may flip


def test_cli_end_to_end_on_cuda(tmp_path):
    run_cli(*TINY, "method=magnitude", "sparsity_pattern=2:4", "bits=4", "group_size=32", "device=cuda", results_dir=tmp_path)
    (record,) = records(tmp_path)
    assert record["status"] == "ok" and record["config"]["device"] == "cuda"
    assert record["config"]["dtype"] == "bfloat16" and record["env"]["gpu"]
    assert record["stats"]["sparsity"] == 0.5
