"""Perplexity with the GPTQ protocol.

Join the corpus' documents (the join is part of the corpus), tokenize once, cut non-overlapping
windows of `seqlen` tokens (the tail shorter than a window is dropped), average the next-token
negative log-likelihood over every predicted token of every window, and exponentiate.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from harness.data import load_corpus
from harness.progress import progress


class Perplexity:
    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.spec = spec
        self.tokens: torch.Tensor | None = None
        self.info: dict[str, Any] = {}

    @staticmethod
    def resolve(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """Top-level `seqlen` sets the window; top-level `max_eval_tokens`, if set, overrides the
        task's own token cap (null in the task: the whole corpus); `data_paths.<dataset>` points at
        a local copy of a hub dataset."""
        cap = config.get("max_eval_tokens")
        return spec | {
            "seqlen": int(config["seqlen"]),
            "max_tokens": cap if cap is not None else spec.get("max_tokens"),
            "data_path": (config.get("data_paths") or {}).get(spec["dataset"]),
        }

    def prepare(self, tokenizer) -> None:
        corpus = load_corpus(self.spec["dataset"], self.spec.get("split"), self.spec.get("data_path"))
        ids = tokenizer(corpus.text, return_tensors="pt").input_ids[0]
        total = ids.numel()
        seqlen = self.spec["seqlen"]
        if self.spec.get("max_tokens"):
            ids = ids[: self.spec["max_tokens"]]
        windows = ids.numel() // seqlen
        if self.spec.get("max_windows"):
            windows = min(windows, self.spec["max_windows"])
        if windows == 0:
            raise ValueError(f"task {self.name}: {ids.numel()} tokens make no window of seqlen={seqlen}")
        self.tokens = ids[: windows * seqlen].view(windows, seqlen)
        self.info = {
            "dataset": corpus.name,
            "text_sha256": corpus.sha256,
            "corpus_tokens": total,
            "max_tokens": self.spec.get("max_tokens"),
            "max_windows": self.spec.get("max_windows"),
            "seqlen": seqlen,
            "windows": windows,
            "predicted_tokens": windows * (seqlen - 1),
        }

    @torch.no_grad()
    def evaluate(self, model) -> tuple[dict[str, float], dict[str, Any]]:
        device = next(model.parameters()).device
        total_nll = 0.0
        for window in progress(self.tokens.split(self.spec.get("batch_size", 1)), f"{self.name} windows", unit="batch"):
            window = window.to(device)
            logits = model(window).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += nll.item()
        ppl = math.exp(total_nll / self.info["predicted_tokens"])
        return {f"{self.name}/ppl": ppl}, self.info


TASK_CLASS = Perplexity
