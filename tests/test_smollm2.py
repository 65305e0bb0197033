"""The real embedded model end to end: 3-bit RTN must cost perplexity against the dense model."""
import pytest

from conftest import records, run_cli

SHORT = ["model=smollm2-135m", "max_eval_tokens=4096"]  # 2 windows of 2048 tokens


@pytest.mark.slow
def test_smollm2_rtn3_is_worse_than_dense(tmp_path):
    run_cli(*SHORT, "method=none", results_dir=tmp_path)
    run_cli(*SHORT, "method=rtn", "bits=3", "group_size=64", results_dir=tmp_path)
    ppl = {r["config"]["method"]["name"]: r["metrics"]["pydoc/ppl"] for r in records(tmp_path)}
    assert 3 < ppl["none"] < 40  # a real pretrained model on English technical prose
    assert ppl["rtn"] > ppl["none"] * 1.05
