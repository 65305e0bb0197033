"""The project's folders are imported as harness.*: with it installed, transformers still imports,
does not mistake kernels/ for Hugging Face's `kernels` package, and runs a model forward."""
import subprocess
import sys

from conftest import REPO

PROBE = """
import importlib.util, torch, transformers, harness.kernels, harness.methods, harness.tasks
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils.import_utils import is_kernels_available
real = importlib.util.find_spec("kernels")
# Only Hugging Face's own distribution may answer to `kernels`, and only if it is installed.
assert is_kernels_available() == (real is not None and real.origin and "site-packages" in real.origin), real
model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, vocab_size=100))
logits = model(torch.tensor([[1, 2, 3]])).logits
assert logits.shape == (1, 3, 100) and torch.isfinite(logits).all()
print("ok", transformers.__version__)
"""


def test_transformers_runs_from_repo_root_and_elsewhere(tmp_path):
    for cwd in (REPO, tmp_path):
        proc = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.startswith("ok")
