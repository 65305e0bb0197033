"""Any lm-eval task by name: `tasks=[lm_eval:arc_easy,lm_eval:hellaswag]`.

The compressed model is evaluated in memory: lm-eval's HFLM wraps the very model object and tokenizer
of the run (no reload, no second copy). lm-eval's metrics join the run's metrics as
`lm_eval:<task>/<metric>` (`/<filter>` appended when the filter is not lm-eval's default `none`), with
lm-eval's standard error as `lm_eval:<task>/<metric>_stderr` and the documents scored as
`lm_eval:<task>/n`; each task's version, shots and prompt settings go into the record.

Standard errors: lm-eval computes a mean metric's (acc, acc_norm, exact_match...) in closed form,
sample std / sqrt(n), whenever `bootstrap_iters` > 0, and bootstraps only the metrics without one
(f1, mcc, bleu, perplexity...) with that many resamples; `bootstrap_iters` = 0 drops every stderr.
The default 100 costs nothing for mean metrics and little for the others.

`max_samples` scores a seeded random subset of each (sub)task's documents (lm-eval's `samples`
argument), not lm-eval's `limit`, which takes the first N: the first documents of a file are often
one topic or one template.

Tasks are looked up in this folder's lm_eval_tasks/ (offline tasks over local data) and in the
folders a top-level `lm_eval_include_path` names, before lm-eval's own ~14k task YAMLs, which take
~20 s to index and are read only when the name is not found first.
"""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from harness.tasks.common import sample_and_batch, take_sample

BUNDLED_TASKS = Path(__file__).parent / "lm_eval_tasks"
# Task settings that say how a task prompts and scores; recorded with its metrics.
RECORDED_CONFIG = (
    "dataset_path", "dataset_name", "test_split", "fewshot_split", "output_type", "doc_to_text",
    "doc_to_choice", "doc_to_target", "target_delimiter", "fewshot_delimiter", "generation_kwargs", "metric_list",
)


def task_manager(task: str, include_paths: list[str]):
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=include_paths, include_defaults=False)
    if task in local.all_tasks:
        return local
    manager = TaskManager(include_path=include_paths)
    if task not in manager.all_tasks:
        raise ValueError(f"lm_eval:{task}: lm-eval knows no such task or group (nor do {', '.join(include_paths)})")
    return manager


def flatten_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's {task: {'acc,none': 0.5, 'acc_stderr,none': ..., 'alias': ...}} as flat numeric metrics."""
    metrics = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, comma, filter_name = key.partition(",")
            # Metrics are keyed 'metric,filter'; other keys ('alias', 'sample_len') describe the task.
            # A stderr lm-eval could not compute is "N/A".
            if not comma or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            suffix = "" if filter_name in ("", "none") else f"/{filter_name}"
            metrics[f"lm_eval:{task}/{metric}{suffix}"] = float(value)
    return metrics


def _jsonable(value: Any) -> Any:
    """The value if JSON can hold it, else its text (configs may hold functions)."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


class LmEvalTask:
    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.spec = spec

    @staticmethod
    def resolve(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """`max_samples` documents per (sub)task, drawn with `seed`; lm-eval's own default seeds for
        few-shot sampling stay, so results compare with other lm-eval runs."""
        extra = config.get("lm_eval_include_path") or []
        return spec | sample_and_batch(spec, config, default_batch=8) | {
            "seed": spec.get("seed", 0),
            "bootstrap_iters": spec.get("bootstrap_iters", 100),
            "num_fewshot": spec.get("num_fewshot"),
            "include_paths": [extra] if isinstance(extra, str) else list(extra),  # besides the bundled folder
        }

    def prepare(self, tokenizer) -> None:
        """Find the task before the model loads: an unknown name fails here."""
        self.tokenizer = tokenizer
        self.manager = task_manager(self.spec["lm_eval_task"], [str(BUNDLED_TASKS), *self.spec["include_paths"]])

    def evaluate(self, model) -> tuple[dict[str, float], dict[str, Any]]:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=self.spec["batch_size"])
        documents = self._sampled_documents()
        out = simple_evaluate(
            model=lm, tasks=[self.spec["lm_eval_task"]], num_fewshot=self.spec["num_fewshot"], samples=documents,
            task_manager=self.manager, log_samples=False, bootstrap_iters=self.spec["bootstrap_iters"],
        )
        configs = out.get("configs", {})
        info = {
            "lm_eval_version": importlib.metadata.version("lm-eval"),
            "task": self.spec["lm_eval_task"],
            "samples": out.get("n-samples", {}),
            "versions": out.get("versions", {}),
            "shots": out.get("n-shot", {}),
            "max_samples": self.spec["max_samples"],
            "documents": documents,
            "bootstrap_iters": self.spec["bootstrap_iters"],
            "configs": {task: {k: _jsonable(c[k]) for k in RECORDED_CONFIG if k in c} for task, c in configs.items()},
        }
        counts = {f"lm_eval:{task}/n": float(n["effective"]) for task, n in info["samples"].items()}
        return flatten_results(out["results"]) | counts, info

    def _sampled_documents(self) -> dict[str, list[int]] | None:
        """{subtask: sorted indices of a seeded random sample of its evaluation documents}, or None
        (every document) without `max_samples`."""
        if self.spec["max_samples"] is None:
            return None
        from lm_eval.tasks import get_task_dict

        return {
            task.config.task: sorted(take_sample(range(len(task.eval_docs)), self.spec["max_samples"], self.spec["seed"]))
            for task in _leaves(get_task_dict([self.spec["lm_eval_task"]], self.manager))
        }


def _leaves(task_dict: dict) -> list:
    """The Task objects of lm-eval's (possibly nested, for groups) task dict."""
    return [leaf for value in task_dict.values() for leaf in (_leaves(value) if isinstance(value, dict) else [value])]


TASK_CLASS = LmEvalTask
