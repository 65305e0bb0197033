"""Instruction following over multi-turn conversations (LLM-KICK uses MT-Bench): the model answers each
turn with the earlier turns and its own earlier answers in context (its chat template where it has
one), and a judge rates every answer 1-10 against the reference answer, MT-Bench's single-answer
grading with reference. Every rating is recorded with the judge's raw reply, the judge and the judge
prompt's version; a reply that states no rating is counted as unrated, not as a score.

Datasets:
  * `facts` (offline, default): two-turn instructions generated with a seeded RNG over the facts that
    countryinfo (MIT) and periodictable (public domain) ship, with reference answers computed from the
    same facts (list capitals in a format, then re-order them; give element symbols, then pick one).
  * `mt_bench`: MT-Bench's 80 two-turn questions: the hub's HuggingFaceH4/mt_bench_prompts (train), or
    `data_paths.mt_bench=` FastChat's question.jsonl (question_id, category, turns, reference).
"""
from __future__ import annotations

import json
import random
from typing import Any

from harness.data import load_hub_dataset
from harness.generation import greedy_generate
from harness.judge import as_chat, make_judge, rate, rated_fraction
from harness.tasks.common import JudgedTask, mean_and_stderr, package_source, take_sample
from harness.tasks.multiple_choice import countries

JUDGE_INTRO = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant "
    "to the user question displayed below. Your evaluation should consider correctness and helpfulness. "
    "You will be given a reference answer and the assistant's answer. Compare the assistant's answer with "
    "the reference answer; identify and correct any mistakes. Be as objective as possible. After a short "
    "explanation, rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", "
    "for example: \"Rating: [[5]]\".\n\n"
)
JUDGE_TURN = "[Question]\n{question}\n\n[Reference Answer]\n{reference}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
JUDGE_FOLLOW_UP = (
    "<|The Start of the Earlier Conversation|>\n{history}\n<|The End of the Earlier Conversation|>\n\n"
    "Rate the assistant's answer to the last user question only.\n\n"
)
RATING = r"\[\[(\d+(?:\.\d+)?)\]\]"
PROMPT_VERSION = "mt-bench-single-v1-with-reference (paraphrased)"


def fact_conversations(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Two-turn instructions with computed references, alternating capitals and elements."""
    import periodictable

    rng = random.Random(seed)
    places = countries()
    elements = [e for e in periodictable.elements if e.number > 0]
    conversations = []
    for k in range(count):
        if k % 2 == 0:
            picked = rng.sample(places, 3)
            names = ", ".join(n for n, _, _ in picked[:2]) + f" and {picked[2][0]}"
            conversations.append({"category": "capitals", "turns": [
                f"Name the capitals of {names}. Write one line per country, in the form 'Country: Capital'.",
                "Now list only those capitals, in alphabetical order, separated by commas.",
            ], "reference": [
                "\n".join(f"{n}: {capital}" for n, capital, _ in picked),
                ", ".join(sorted(capital for _, capital, _ in picked)),
            ]})
        else:
            picked = rng.sample(elements, 3)
            names = ", ".join(e.name for e in picked[:2]) + f" and {picked[2].name}"
            heaviest = max(picked, key=lambda e: e.number)
            conversations.append({"category": "elements", "turns": [
                f"Give the chemical symbols of {names}, as a comma-separated list in that order.",
                "Which of those three elements has the highest atomic number? Answer with its name only.",
            ], "reference": [", ".join(e.symbol for e in picked), heaviest.name.capitalize()]})
    return conversations


def mt_bench_conversations(data_path: str | None) -> list[dict[str, Any]]:
    """MT-Bench questions from FastChat's question.jsonl or the hub's mt_bench_prompts (`prompt` for turns)."""
    if data_path:
        with open(data_path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        rows = load_hub_dataset("mt_bench", ("HuggingFaceH4/mt_bench_prompts",), "train", None, "json")
    return [
        {"category": row["category"], "turns": list(row.get("turns") or row["prompt"]), "reference": list(row.get("reference") or [])}
        for row in rows
    ]


class InstructionFollowing(JudgedTask):
    def prepare(self, tokenizer) -> None:
        if self.spec["dataset"] == "facts":
            conversations = fact_conversations(self.spec["size"], self.spec["seed"])
            self.source = f"generated (seed {self.spec['seed']}) from {package_source('countryinfo', 'MIT')}; {package_source('periodictable', 'public domain')}"
        else:
            conversations = mt_bench_conversations(self.spec.get("data_path"))
            self.source = self.spec.get("data_path") or "hub:HuggingFaceH4/mt_bench_prompts"
        self.available = len(conversations)
        self.conversations = take_sample(conversations, self.spec.get("max_samples"), self.spec["seed"])
        self.tokenizer = tokenizer  # generation needs it after the model loads
        self.judge = make_judge(self.spec["judge"])  # a missing judge fails before the model loads

    def evaluate(self, model) -> tuple[dict[str, float], dict[str, Any]]:
        answers = self._answer_turns(model)
        prompts, where = [], []
        for c, (conversation, replies) in enumerate(zip(self.conversations, answers)):
            for turn in range(len(conversation["turns"])):
                prompts.append(judge_prompt(conversation, replies, turn))
                where.append((c, turn))
        ratings = rate(self.judge, prompts, RATING, 1, 10)
        records = [{"category": c["category"], "answers": a, "ratings": []} for c, a in zip(self.conversations, answers)]
        for (c, _), rating in zip(where, ratings):
            records[c]["ratings"].append(rating)
        metrics = {f"{self.name}/rated_fraction": rated_fraction(ratings), f"{self.name}/n": len(self.conversations)}
        turns = max(len(c["turns"]) for c in self.conversations)
        for turn in range(turns):
            rated = [r["ratings"][turn]["rating"] for r in records if turn < len(r["ratings"])]
            metrics |= mean_and_stderr(f"{self.name}/turn_{turn + 1}", [x for x in rated if x is not None], binary=False)
        metrics |= mean_and_stderr(f"{self.name}/score", [r["rating"] for r in ratings if r["rating"] is not None], binary=False)
        return metrics, {
            "dataset": self.spec["dataset"],
            "source": self.source,
            "available": self.available,
            "samples": len(self.conversations),
            "prompt_version": PROMPT_VERSION,
            "judge_prompt": JUDGE_INTRO + JUDGE_TURN,
            "scoring": "mean judge rating (1-10) per turn and overall over the answers it rated, stderr sample std / sqrt(rated) (answers of one conversation counted as independent); unrated replies excluded and counted",
            "judge": self.judge.describe(),
            "unrated": sum(r["rating"] is None for r in ratings),
            "ratings": records,
        }

    def _answer_turns(self, model) -> list[list[str]]:
        """The model's answer to every turn of every conversation, turn by turn: all first turns in one
        batched pass, then all second turns with the first answers in context, ..."""
        answers: list[list[str]] = [[] for _ in self.conversations]
        for turn in range(max(len(c["turns"]) for c in self.conversations)):
            active = [i for i, c in enumerate(self.conversations) if turn < len(c["turns"])]
            prompts = [as_chat(self.tokenizer, _messages(self.conversations[i], answers[i], turn)) for i in active]
            replies = greedy_generate(
                model, self.tokenizer, prompts, max_new_tokens=self.spec["max_new_tokens"], batch_size=self.spec["batch_size"],
            )
            for i, reply in zip(active, replies):
                answers[i].append(reply.strip())
        return answers


def _messages(conversation: dict[str, Any], answers: list[str], turn: int) -> list[dict[str, str]]:
    """The conversation up to the user's message of `turn`, with the model's earlier answers."""
    messages = []
    for k in range(turn):
        messages += [{"role": "user", "content": conversation["turns"][k]}, {"role": "assistant", "content": answers[k]}]
    return messages + [{"role": "user", "content": conversation["turns"][turn]}]


def judge_prompt(conversation: dict[str, Any], answers: list[str], turn: int) -> str:
    references = conversation["reference"]
    current = JUDGE_TURN.format(
        question=conversation["turns"][turn], answer=answers[turn],
        reference=references[turn] if turn < len(references) else "(none given)",
    )
    if turn == 0:
        return JUDGE_INTRO + current
    history = "\n\n".join(f"### User:\n{m['content']}" if m["role"] == "user" else f"### Assistant:\n{m['content']}"
                          for m in _messages(conversation, answers, turn)[:-1])
    return JUDGE_INTRO + JUDGE_FOLLOW_UP.format(history=history) + current


TASK_CLASS = InstructionFollowing
