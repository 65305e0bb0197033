"""The GPTQ perplexity protocol on hand-checked toy cases."""
import math

import torch

from harness.tasks.perplexity import Perplexity


class FixedModel(torch.nn.Module):
    """Next-token distribution depends only on the current token: probs[current] -> row."""

    def __init__(self, probs):
        super().__init__()
        self.log_probs = torch.nn.Parameter(torch.log(torch.tensor(probs)), requires_grad=False)

    def forward(self, ids):
        return type("Out", (), {"logits": self.log_probs[ids]})


def task_over(tokens, seqlen):
    task = Perplexity("toy", {"seqlen": seqlen})
    windows = len(tokens) // seqlen
    task.tokens = torch.tensor(tokens[: windows * seqlen]).view(windows, seqlen)
    task.info = {"predicted_tokens": windows * (seqlen - 1)}
    return task


def test_uniform_model_has_perplexity_vocab_size():
    model = FixedModel([[0.25] * 4] * 4)
    (ppl,) = task_over([0, 1, 2, 3, 0, 1, 2], seqlen=3).evaluate(model)[0].values()
    assert math.isclose(ppl, 4.0, rel_tol=1e-6)


def test_windows_do_not_overlap_and_tail_is_dropped():
    # p(next = current + 1) = 0.5, every other token 1/6. Windows of 3 over 0 1 2 | 3 0 1 | 3 (dropped):
    # predicted pairs (0,1) (1,2) | (3,0) (0,1); (2,3) crosses a window edge and is not scored.
    probs = [[0.5 if j == (i + 1) % 4 else 1 / 6 for j in range(4)] for i in range(4)]
    tokens = [0, 1, 2, 3, 0, 1, 3]
    (ppl,) = task_over(tokens, seqlen=3).evaluate(FixedModel(probs))[0].values()
    assert math.isclose(ppl, math.exp(-math.log(0.5)), rel_tol=1e-6)
    tokens = [0, 1, 3, 3, 0, 1, 3]  # pairs (0,1) (1,3) | (3,0) (0,1): three at 0.5, one at 1/6
    (ppl,) = task_over(tokens, seqlen=3).evaluate(FixedModel(probs))[0].values()
    assert math.isclose(ppl, math.exp(-(3 * math.log(0.5) + math.log(1 / 6)) / 4), rel_tol=1e-6)
