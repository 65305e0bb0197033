"""Evaluation tasks: conf/task/<name>.yaml names the task module (`task:`) and its settings.

A task module defines `TASK_CLASS` with:
  * `resolve(spec, config)`: the full settings of one run (recorded, part of the run id);
  * `prepare(tokenizer)`: read and tokenize its data, before the model loads, so missing data fails early;
  * `evaluate(model)`: metrics (flat name -> number) and what was measured (sample counts, protocol).

`lm_eval:<task>` names any lm-eval task (tasks/lm_eval_harness.py); it needs no YAML here.
"""
from __future__ import annotations

import importlib
import importlib.resources
from typing import Any

from omegaconf import OmegaConf

from harness.config import ConfigError


def available() -> list[str]:
    folder = importlib.resources.files("harness.conf") / "task"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def task_class(spec: dict[str, Any]):
    return importlib.import_module(f"harness.tasks.{spec['task']}").TASK_CLASS


LM_EVAL_PREFIX = "lm_eval:"


def resolve_specs(names: list[str], config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings of every task named in `tasks=[...]`, resolved against the top-level config."""
    specs = {}
    for name in names:
        spec = _own_spec(name)
        specs[name] = task_class(spec).resolve(spec, config)
    return specs


def _own_spec(name: str) -> dict[str, Any]:
    """A task's settings before the top-level config: its conf/task/<name>.yaml, or for lm_eval:<task>
    the lm-eval task's name."""
    if name.startswith(LM_EVAL_PREFIX) and name[len(LM_EVAL_PREFIX) :]:
        return {"task": "lm_eval_harness", "lm_eval_task": name[len(LM_EVAL_PREFIX) :]}
    known = available()
    if name not in known:
        raise ConfigError(f"task={name}: unknown task; known tasks: {', '.join(known)}, or lm_eval:<lm-eval task>")
    path = importlib.resources.files("harness.conf") / "task" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)


def build(name: str, spec: dict[str, Any]):
    return task_class(spec)(name, spec)
