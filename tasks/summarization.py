"""In-context summarization (LLM-KICK): the model summarizes stories of three lengths, and a judge
rates each summary 1-5 on coherence, consistency, fluency and relevance (G-Eval's four aspects), one
request per summary and aspect. Every rating is recorded with the judge's raw reply, the judge and
the judge prompt's version; a reply that states no rating is counted as unrated, not as a score.

Datasets:
  * `fictional` (offline, default): stories generated with a seeded RNG about invented people (the
    passages of the retrieval task), with `people` biographies per story for each length bucket.
  * `cnn_dailymail`: CNN/DailyMail 3.0.0 test stories (abisee/cnn_dailymail), bucketed by their word
    count (`words` gives each bucket's [low, high) range). Offline: `data_paths.cnn_dailymail=` a folder
    with the hub's 3.0.0/test-*.parquet.
`max_samples` stories are summarized in all, spread evenly over the buckets.
"""
from __future__ import annotations

import math
import random
from typing import Any

from harness.data import load_hub_dataset
from harness.generation import greedy_generate
from harness.judge import make_judge, rate, rated_fraction
from harness.tasks.common import JudgedTask, mean_and_stderr
from harness.tasks.retrieval_qa import fictional_questions

SUMMARY_PROMPT = "Summarize the following story in two or three sentences.\n\nStory:\n{story}\n\nSummary:"
ASPECTS = {
    "coherence": "the summary is well structured and organized, each sentence building on the last into a coherent account of the story",
    "consistency": "every statement of the summary is supported by the story; nothing is invented or contradicted",
    "fluency": "the sentences are grammatical and read naturally: spelling, punctuation, word choice and structure",
    "relevance": "the summary keeps the story's important information and leaves out the unimportant and the redundant",
}
JUDGE_PROMPT = (
    "You will be given a story and a summary written for it. Rate the summary on one aspect, {aspect}: "
    "{definition}.\n\nStory:\n{story}\n\nSummary:\n{summary}\n\n"
    'Give a rating from 1 (worst) to 5 (best). Answer with one line in the form "Rating: N".'
)
RATING = r"Rating:\s*\**\s*([1-5](?:\.\d+)?)"
PROMPT_VERSION = "summarize/v1; judge g-eval-4-aspects/v1"


def fictional_stories(spec: dict[str, Any], per_bucket: int) -> list[dict[str, Any]]:
    return [
        {"bucket": bucket, "story": q["passage"]}
        for bucket, people in spec["people"].items()
        for q in fictional_questions(per_bucket, spec["seed"], people)
    ]


def cnn_dailymail_stories(spec: dict[str, Any], per_bucket: int) -> list[dict[str, Any]]:
    rows = load_hub_dataset("cnn_dailymail", ("abisee/cnn_dailymail", "3.0.0"), spec.get("split", "test"), spec.get("data_path"), "parquet")
    articles = rows["article"]
    stories = []
    for bucket, (low, high) in spec["words"].items():
        fitting = [i for i, article in enumerate(articles) if low <= len(article.split()) < high]
        chosen = sorted(random.Random(spec["seed"]).sample(fitting, min(per_bucket, len(fitting))))
        stories += [{"bucket": bucket, "story": articles[i], "id": rows[i]["id"]} for i in chosen]
    return stories


SOURCES = {"fictional": fictional_stories, "cnn_dailymail": cnn_dailymail_stories}


def describe_source(spec: dict[str, Any]) -> str:
    if spec["dataset"] == "fictional":
        return f"generated (seed {spec['seed']}, biographies per story {spec['people']})"
    return spec.get("data_path") or "hub:abisee/cnn_dailymail 3.0.0"


class Summarization(JudgedTask):
    def prepare(self, tokenizer) -> None:
        buckets = self.spec["people"] if self.spec["dataset"] == "fictional" else self.spec["words"]
        if not self.spec.get("max_samples"):
            raise ValueError(f"task {self.name}: set max_samples (stories in all): every story costs 4 judge requests")
        per_bucket = math.ceil(self.spec["max_samples"] / len(buckets))
        self.stories = SOURCES[self.spec["dataset"]](self.spec, per_bucket)
        self.tokenizer = tokenizer  # generation needs it after the model loads
        self.judge = make_judge(self.spec["judge"])  # a missing judge fails before the model loads

    def evaluate(self, model) -> tuple[dict[str, float], dict[str, Any]]:
        summaries = greedy_generate(
            model, self.tokenizer, [SUMMARY_PROMPT.format(story=s["story"]) for s in self.stories],
            max_new_tokens=self.spec["max_new_tokens"], batch_size=self.spec["batch_size"], stop=["\n\n"],
        )
        requests = [(i, aspect) for i in range(len(self.stories)) for aspect in ASPECTS]
        ratings = rate(
            self.judge,
            [JUDGE_PROMPT.format(aspect=a, definition=ASPECTS[a], story=self.stories[i]["story"], summary=summaries[i].strip()) for i, a in requests],
            RATING, 1, 5,
        )
        per_story = [{"bucket": s["bucket"], "summary": summary, "ratings": {}} for s, summary in zip(self.stories, summaries)]
        for (i, aspect), rating in zip(requests, ratings):
            per_story[i]["ratings"][aspect] = rating
        metrics = self._metrics(per_story) | {f"{self.name}/rated_fraction": rated_fraction(ratings), f"{self.name}/n": len(self.stories)}
        return metrics, {
            "dataset": self.spec["dataset"],
            "source": describe_source(self.spec),
            "samples": len(self.stories),
            "samples_per_bucket": {b: sum(s["bucket"] == b for s in self.stories) for b in dict.fromkeys(s["bucket"] for s in self.stories)},
            "prompt_version": PROMPT_VERSION,
            "prompt": SUMMARY_PROMPT,
            "judge_prompt": JUDGE_PROMPT,
            "scoring": "mean judge rating (1-5) per aspect over the summaries it rated, stderr sample std / sqrt(rated); unrated replies excluded and counted",
            "judge": self.judge.describe(),
            "unrated": sum(r["rating"] is None for r in ratings),
            "ratings": per_story,
        }

    def _metrics(self, per_story: list[dict[str, Any]]) -> dict[str, float]:
        """Mean rating per aspect (and its standard error), overall and per bucket, where the judge rated anything."""
        metrics = {}
        for bucket in [None, *dict.fromkeys(s["bucket"] for s in per_story)]:
            for aspect in ASPECTS:
                rated = [s["ratings"][aspect]["rating"] for s in per_story if bucket in (None, s["bucket"])]
                rated = [r for r in rated if r is not None]
                metrics |= mean_and_stderr(f"{self.name}/{bucket + '/' if bucket else ''}{aspect}", rated, binary=False)
        return metrics


TASK_CLASS = Summarization
