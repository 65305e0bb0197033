"""Bad input: a one-line error naming the bad value, non-zero exit, before any model loads."""
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from harness.config import ConfigError
from harness.run import plan

CASES = {
    "bits too low": (["bits=1"], "bits=1"),
    "bits too high": (["bits=17"], "bits=17"),
    "bits not a number": (["bits=four"], "bits='four'"),
    "group size does not divide": (["bits=4", "group_size=48"], "group_size=48 does not divide in_features=64"),
    "group size zero": (["bits=4", "group_size=0"], "group_size=0"),
    "sparsity one": (["method=magnitude", "sparsity=1.0"], "sparsity=1.0"),
    "sparsity negative": (["method=magnitude", "sparsity=-0.1"], "sparsity=-0.1"),
    "N equals M": (["method=magnitude", "sparsity_pattern=4:4"], "sparsity_pattern='4:4'"),
    "N above M": (["method=magnitude", "sparsity_pattern=5:4"], "sparsity_pattern='5:4'"),
    "pattern not N:M": (["method=magnitude", "sparsity_pattern=blocky"], "sparsity_pattern='blocky'"),
    "M does not divide": (["method=magnitude", "sparsity_pattern=2:3"], "M=3 does not divide"),
    "pattern contradicts sparsity": (["method=magnitude", "sparsity=0.3", "sparsity_pattern=2:4"], "contradicts"),
    "rtn cannot prune": (["method=rtn", "sparsity=0.5"], "method=rtn does not prune"),
    "magnitude needs sparsity": (["method=magnitude", "sparsity=0"], "method=magnitude prunes"),
    "rtn needs bits": (["method=rtn", "bits=16"], "method=rtn quantizes"),
    "rtn above 8 bits": (["method=rtn", "bits=12"], "bits=12: method=rtn supports 2..8"),
    "dense baseline with bits": (["method=none", "bits=4"], "method=none leaves weights"),
    "unknown task": (["tasks=[pydoc,nope]"], "task=nope"),
    "unknown dtype": (["dtype=fp8"], "dtype='fp8'"),
    "cuda without a GPU": (["device=cuda"], "device=cuda"),
    "unknown calibration set": (["method=gptq", "bits=4", "group_size=32", "calib.dataset=pile"], "calib.dataset=pile"),
    "no calibration windows": (["method=wanda", "sparsity=0.5", "calib.n_samples=0"], "calib.n_samples=0"),
    "hqq axis": (["method=hqq", "method.axis=2"], "method.axis=2"),
    "negative window": (["seqlen=-5"], "seqlen=-5: must be an integer >= 1"),
    "window not a number": (["seqlen=long"], "seqlen='long'"),
    "no eval tokens": (["max_eval_tokens=0"], "max_eval_tokens=0: must be an integer >= 1, or null"),
    "no samples": (["max_samples=0"], "max_samples=0"),
    "fractional batch": (["eval_batch_size=1.5"], "eval_batch_size=1.5"),
    "negative seed": (["seed=-1"], "seed=-1: must be an integer >= 0"),
    "negative calibration seed": (["method=gptq", "bits=4", "group_size=32", "calib.seed=-3"], "calib.seed=-3"),
    "calibration window zero": (["method=gptq", "bits=4", "group_size=32", "calib.seqlen=0"], "calib.seqlen=0"),
    "claim never stale": (["claim_stale_s=0"], "claim_stale_s=0"),
}


@pytest.mark.parametrize("overrides,message", CASES.values(), ids=CASES.keys())
def test_bad_value_is_named(hydra_cfg, overrides, message):
    if overrides == ["device=cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        plan(hydra_cfg("model=tiny-random", *overrides))


# `python -m harness` with a Python audit hook that notes every file opened with a weight format's
# suffix (the default model's GGUF holds its tokenizer too): what the process really read, unpatched.
_WATCHED_CLI = """
import runpy, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(args[0]) if event == "open" and str(args[0]).endswith(
    (".gguf", ".safetensors", ".bin", ".pt")) else None)
sys.argv = ["harness", *sys.argv[1:]]
try:
    runpy.run_module("harness", run_name="__main__", alter_sys=True)
finally:
    print("weight files opened:", opened, file=sys.stderr)
"""


def watched_cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WATCHED_CLI, *overrides], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method=rtn", "bits=17"], "error: bits=17"),
        (["model=no-such-model"], "no-such-model"),
        (["method=no-such-method"], "no-such-method"),
        (["tasks=[nope]"], "error: task=nope"),
        (["method=hqq", "bits=7"], "bits=7: method=hqq"),
    ],
    ids=["bits", "unknown model", "unknown method", "unknown task", "hqq bits"],
)
def test_cli_exits_nonzero_before_loading_and_records_nothing(tmp_path, overrides, message):
    """On the default (real, 135M) model: the error comes before its GGUF (weights and tokenizer) is
    ever opened. benchmarks/fail_fast.py times these exits."""
    proc = watched_cli(*overrides, f"results_dir={tmp_path}")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "weight files opened: []" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_weight_file_watch_sees_the_default_model_load(tmp_path):
    """The watch is real: a run that passes the config check reads the GGUF (here its tokenizer, then
    the perplexity task rejects max_eval_tokens=1, which makes no window, before the weights load)."""
    proc = watched_cli("method=none", "max_eval_tokens=1", f"results_dir={tmp_path}")
    assert ".gguf" in proc.stderr.split("weight files opened:")[-1]


def test_hub_model_on_an_offline_machine_is_a_config_error(hydra_cfg, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="model=llama3-8b: 'meta-llama/Meta-Llama-3-8B' is a hub id"):
        plan(hydra_cfg("model=llama3-8b"))
