import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
# Small enough for a 2-core CPU: 4 windows of 256 byte-tokens on the 2-layer random model.
TINY = ["model=tiny-random", "seqlen=256", "max_eval_tokens=1024"]


def run_cli(*overrides: str, results_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m harness` as a user runs it, in a fresh process."""
    cmd = [sys.executable, "-m", "harness", *overrides, f"results_dir={results_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def records(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results_dir / "runs").glob("*.json"))]


@pytest.fixture
def hydra_cfg():
    """Compose the real conf/ tree in-process, as `python -m harness` would, without running it."""

    def _compose(*overrides: str):
        with initialize_config_module("harness.conf", version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads, and on a shared 2-core machine spinning threads stall."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
