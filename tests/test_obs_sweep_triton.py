"""The Triton block sweep (harness/numerics/obs_sweep_triton.py) against the Python column loop of
methods/gptq.py `obs_sweep`, through GPTQ and SparseGPT as the methods call them: on the CPU in
Triton's interpreter (small matrices several blocks wide), on CUDA at Llama-3-8B's shapes.

Tolerance: none, the results must be bitwise equal. Both paths do the same float32 operations in the
same order (IEEE division, rounding half to even, multiply then subtract unfused), and every block's
mask and quantization parameters come from the same torch code; a one-ulp slip that flips one
rounding shows as a whole quantization step, and then spreads through the later columns.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.methods.gptq import dead_inputs, gptq_quantize, inverse_hessian_upper, obs_sweep
from harness.methods.sparsegpt import sparsegpt_prune
from harness.numerics.quant import QuantFormat
from harness.numerics.sparsity import SparsityPattern

W4G128, W4G64 = QuantFormat(4, 128, False), QuantFormat(4, 64, False)
HALF = SparsityPattern(0.5)
# name -> (cols, block, fmt, act_order, static_groups, pattern)
CASES = {
    "gptq w4g128": (384, 128, W4G128, False, False, None),
    "gptq w4g64, 320 columns: a last block of 64": (320, 128, W4G64, False, False, None),
    "gptq w4g128, blocks of 80: groups start inside blocks and span two": (384, 80, W4G128, False, False, None),
    "gptq w4g128 act-order": (384, 128, W4G128, True, False, None),
    "gptq w4g64 act-order static groups": (320, 128, W4G64, True, True, None),
    "gptq w4g128 static groups": (384, 128, W4G128, False, True, None),
    "gptq w3 per-row symmetric, 200 columns": (200, 128, QuantFormat(3, -1, True), False, False, None),
    "sparsegpt 50%": (320, 128, None, False, False, HALF),
    "sparsegpt 50% + w4g64": (320, 128, W4G64, False, False, HALF),
}
GPU_SHAPES = [(4096, 4096), (1024, 14336)]  # o_proj; a slice of down_proj's rows at its full width
GPU_CASES = ["gptq w4g128", "gptq w4g128 act-order", "gptq w4g128 static groups", "sparsegpt 50% + w4g64"]


def problem(rows: int, cols: int, device: str = "cpu", seed: int = 0):
    """W [rows, cols] and H = 2/n X^T X from activations with outlier channels and one dead input."""
    gen = torch.Generator(device).manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen, device=device)
    x = torch.randn(max(1024, cols // 4), cols, generator=gen, device=device)
    x *= torch.exp(torch.randn(cols, generator=gen, device=device))
    x[:, 7] = 0
    return w, 2 / x.shape[0] * x.T @ x


def tied_problem(rows: int, cols: int, device: str = "cpu"):
    """Weights that quantize on exact ties: every group of 128 spans [-8, 7], so w4's scale is 1 and
    the other weights sit half way between two codes; H = I, so the sweep leaves them there (its
    updates add exact zeros). Half-up rounding instead of half-to-even shows here."""
    w = torch.randint(-8, 7, (rows, cols), generator=torch.Generator().manual_seed(1)) + 0.5
    w[:, 0::128], w[:, 1::128] = -8.0, 7.0
    return w.to(device), torch.eye(cols, device=device)


def compress(case: str, w: torch.Tensor, h: torch.Tensor, use_triton: bool):
    """The weight GPTQ or SparseGPT makes of `w` for one of CASES, and the weights SparseGPT's mask kept."""
    _, block, fmt, act_order, static, pattern = CASES[case]
    if pattern is None:
        return gptq_quantize(w, h, fmt, 0.01, block, act_order, static, use_triton=use_triton), None
    return sparsegpt_prune(w, inverse_hessian_upper(h, 0.01), dead_inputs(h), pattern, fmt, block, use_triton=use_triton)


def compare(case: str, w: torch.Tensor, h: torch.Tensor) -> dict:
    """Both sweeps of one case; the share of weights that differ and the largest difference / max |W|."""
    (python, python_kept), (triton, triton_kept) = (compress(case, w, h, use_triton) for use_triton in (False, True))
    differ = python != triton
    return {
        "case": case, "shape": list(w.shape), "differ": differ.float().mean().item(),
        "max_diff": ((python - triton).abs().max() / w.abs().max()).item(),
        "kept": [python_kept, triton_kept], "pruned": (python == 0).float().mean().item(),
    }


def assert_equal(result: dict) -> None:
    assert result["differ"] == 0 and result["max_diff"] == 0, result
    assert result["kept"][0] == result["kept"][1], result


# 20 rows: two programs of 16 rows, the second mostly masked. The interpreter runs each program's
# column loop in Python (about a second per program and block of 128 columns).
INTERPRETED = """
import json, sys
sys.path.insert(0, "tests")
from test_obs_sweep_triton import CASES, compare, problem, tied_problem
for case, (cols, *_) in CASES.items():
    print(json.dumps(compare(case, *problem(20, cols))), flush=True)
print(json.dumps(compare("gptq w4g128", *tied_problem(20, 256)) | {"case": "ties"}), flush=True)
"""


def test_triton_sweep_equals_the_python_sweep_in_the_cpu_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, env=env, timeout=900,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["case"] for r in results] == [*CASES, "ties"]
    for result in results:
        assert_equal(result)
        if result["case"] != "ties" and CASES[result["case"]][-1] is not None:  # the masks pruned, as asked (one weight more per block)
            assert 0.5 <= result["pruned"] < 0.55, result


def test_the_python_sweep_on_the_cpu_and_for_n_m():
    w, h = problem(8, 64)
    hinv = inverse_hessian_upper(h, 0.01)
    two_four = SparsityPattern(0.5, 2, 4)
    auto = sparsegpt_prune(w, hinv, dead_inputs(h), two_four, None, 32)  # use_triton=None: no CUDA, no Triton
    assert torch.equal(auto[0], sparsegpt_prune(w, hinv, dead_inputs(h), two_four, None, 32, use_triton=False)[0])
    with pytest.raises(ValueError, match="N:M"):
        obs_sweep(w.clone(), hinv, 32, pattern=two_four, use_triton=True)


@pytest.mark.gpu
@pytest.mark.parametrize("rows,cols", GPU_SHAPES)
@pytest.mark.parametrize("case", GPU_CASES)
def test_triton_sweep_equals_the_python_sweep_on_cuda(case, rows, cols):
    pytest.importorskip("triton")
    assert_equal(compare(case, *problem(rows, cols, "cuda")))


@pytest.mark.gpu
def test_triton_sweep_rounds_ties_as_the_python_sweep_on_cuda():
    pytest.importorskip("triton")
    assert_equal(compare("gptq w4g128", *tied_problem(4096, 4096, "cuda")))
