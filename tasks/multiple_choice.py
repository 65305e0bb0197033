"""Multiple-choice QA in MMLU's (Hendrycks) k-shot format, scored by the log-likelihood of the answer letter.

The prompt is a header naming the topic, k solved examples of that topic, then the question:

    The following are multiple choice questions (with answers) about {topic}.\\n\\n
    {question}\\nA. {choice}\\nB. ...\\nAnswer: {letter}\\n\\n     (k times)
    {question}\\nA. {choice}\\nB. ...\\nAnswer:

The predicted answer is the letter whose continuation (' A', ' B', ...) is most likely. As in Hendrycks'
code, examples are dropped (k, k-1, ...) until the prompt fits `max_prompt_tokens`.

`answer: text` scores the choices' own words instead (' Paris'; solved examples answer the same way),
by log-likelihood per character, as lm-eval's acc_norm does so that long answers are not penalized:
models below ~1B parameters sit at chance with letters (they have not learned to map options to
letters) but still show what they know through the answer text.

Datasets:
  * `facts` (offline, default): questions generated from structured facts that PyPI packages ship,
    with seeded distractors drawn from the other facts of the same kind: country capitals and world
    regions from `countryinfo` (MIT), element symbols and atomic numbers from `periodictable`
    (public domain). The first `shots_per_category` questions of each kind (after a seeded shuffle) are
    the solved examples; the rest are asked.
  * `mmlu`: MMLU (cais/mmlu, config `all`): the test split is asked, 5-shot from the dev split of the
    same subject; accuracy overall and per Hendrycks category (STEM, humanities, social sciences,
    other). Offline: `data_paths.mmlu=` a folder with the hub's all/{test,dev}-*.parquet.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from harness.data import load_hub_dataset
from harness.generation import choice_logprobs
from harness.tasks.common import SampledTask, mean, mean_and_stderr, package_source, take_sample

LETTERS = "ABCD"
PROMPT_VERSION = "hendrycks-mmlu/v2"  # v2: prompt + choice tokenized together, as lm-eval does
SCORING = {
    "letter": "argmax over choices of log p(' <letter>' | prompt), prompt + choice tokenized together (lm-eval); accuracy = share of argmax == gold; stderr binomial",
    "text": "argmax over choices of log p(' <choice text>' | prompt) / len(' <choice text>'), tokenized together (lm-eval); accuracy = share of argmax == gold; stderr binomial",
}

# Hendrycks' categories.py, subjects grouped by the four reported categories.
MMLU_CATEGORIES = {
    "stem": [
        "abstract_algebra", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
        "college_mathematics", "college_physics", "computer_security", "conceptual_physics",
        "electrical_engineering", "elementary_mathematics", "high_school_biology", "high_school_chemistry",
        "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning",
    ],
    "humanities": [
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ],
    "social_sciences": [
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
        "human_sexuality", "professional_psychology", "public_relations", "security_studies", "sociology",
        "us_foreign_policy",
    ],
    "other": [
        "anatomy", "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
        "management", "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    ],
}
MMLU_CATEGORY = {subject: category for category, subjects in MMLU_CATEGORIES.items() for subject in subjects}


# --- data ----------------------------------------------------------------------------------------


def mmlu_questions(data_path: str | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """(test questions, dev examples by topic) of MMLU."""
    def rows(split):
        return [
            {
                "question": row["question"], "choices": list(row["choices"]), "answer": int(row["answer"]),
                "topic": row["subject"].replace("_", " "), "category": MMLU_CATEGORY[row["subject"]],
            }
            for row in load_hub_dataset("mmlu", ("cais/mmlu", "all"), split, data_path, "parquet")
        ]

    shots = defaultdict(list)
    for example in rows("dev"):
        shots[example["topic"]].append(example)
    return rows("test"), dict(shots)


def fact_questions(seed: int = 0, shots_per_category: int = 5) -> tuple[list[dict], dict[str, list[dict]]]:
    """(questions, solved examples by topic) generated from the facts countryinfo and periodictable ship."""
    import periodictable

    rng = random.Random(seed)
    places = countries()
    elements = [(e.name.capitalize(), e.symbol, str(e.number)) for e in periodictable.elements if e.number > 0]
    kinds = [
        ("capital", "world capitals", [(f"What is the capital of {n}?", capital) for n, capital, _ in places]),
        ("region", "world regions", [(f"In which region of the world is {n}?", region) for n, _, region in places]),
        ("element_symbol", "chemical symbols", [(f"What is the chemical symbol of {n}?", symbol) for n, symbol, _ in elements]),
        ("atomic_number", "atomic numbers", [(f"What is the atomic number of {n}?", number) for n, _, number in elements]),
    ]
    questions, shots = [], defaultdict(list)
    for category, topic, facts in kinds:
        made = [_with_distractors(question, answer, facts, rng) | {"topic": topic, "category": category} for question, answer in facts]
        rng.shuffle(made)
        shots[topic] += made[:shots_per_category]
        questions += made[shots_per_category:]
    return questions, dict(shots)


def countries() -> list[tuple[str, str, str]]:
    """(name, capital, region) of every country that has both (Vatican City's capital is a one-item list)."""
    from countryinfo import all_countries

    found = []
    for country in all_countries():
        capital = country.capital()
        capital = capital[0] if isinstance(capital, list) else capital
        if capital and country.region():
            found.append((country.name(), capital, country.region()))
    return found


def _with_distractors(question: str, answer: str, facts: list[tuple[str, str]], rng: random.Random) -> dict:
    """The question with its answer and three other answers of the same kind, in seeded order."""
    others = sorted({a for _, a in facts} - {answer})
    choices = rng.sample(others, len(LETTERS) - 1) + [answer]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "answer": choices.index(answer)}


SOURCES = {
    "facts": lambda spec: (
        *fact_questions(spec["seed"], spec["shots"]),
        f"{package_source('countryinfo', 'MIT')}; {package_source('periodictable', 'public domain')}",
    ),
    "mmlu": lambda spec: (*mmlu_questions(spec.get("data_path")), spec.get("data_path") or "hub:cais/mmlu all"),
}


# --- prompts -------------------------------------------------------------------------------------


def answers(example: dict, answer_format: str) -> list[str]:
    """The continuations scored for each choice: ' A', ' B', ... or the choices' own words."""
    return [f" {letter}" if answer_format == "letter" else f" {choice}" for letter, choice in zip(LETTERS, example["choices"])]


def format_question(example: dict, solved: bool, answer_format: str = "letter") -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, example["choices"]))
    answer = f"{answers(example, answer_format)[example['answer']]}\n\n" if solved else ""
    return f"{example['question']}{options}\nAnswer:{answer}"


def build_prompt(
    example: dict, shots: list[dict], k: int, count_tokens, max_tokens: int, answer_format: str = "letter"
) -> tuple[str, int]:
    """(prompt, shots used): the k-shot prompt, with examples dropped until prompt and longest answer
    fit `max_tokens`."""
    header = f"The following are multiple choice questions (with answers) about {example['topic']}.\n\n"
    question = format_question(example, solved=False)
    longest = max(count_tokens(a) for a in answers(example, answer_format))
    for used in range(min(k, len(shots)), -1, -1):
        prompt = header + "".join(format_question(s, True, answer_format) for s in shots[:used]) + question
        if count_tokens(prompt) + longest <= max_tokens:
            return prompt, used
    raise ValueError(f"a question alone is longer than max_prompt_tokens={max_tokens}: {example['question'][:80]!r}")


# --- task ----------------------------------------------------------------------------------------


class MultipleChoice(SampledTask):
    def prepare(self, tokenizer) -> None:
        questions, shots, source = SOURCES[self.spec["dataset"]](self.spec)
        self.answer_format = self.spec.get("answer", "letter")
        self.tokenizer = tokenizer  # scoring needs it after the model loads
        self.samples = take_sample(questions, self.spec.get("max_samples"), self.spec["seed"])
        count = lambda text: len(tokenizer(text).input_ids)  # noqa: E731
        built = [
            build_prompt(q, shots.get(q["topic"], []), self.spec["shots"], count, self.spec["max_prompt_tokens"], self.answer_format)
            for q in self.samples
        ]
        self.prompts = [prompt for prompt, _ in built]
        self.info = {
            "dataset": self.spec["dataset"],
            "source": source,
            "available": len(questions),
            "samples": len(self.samples),
            "shots": self.spec["shots"],
            "mean_shots_used": mean([used for _, used in built]),
            "max_prompt_tokens": self.spec["max_prompt_tokens"],
            "prompt_version": PROMPT_VERSION,
            "answer_format": self.answer_format,
            "scoring": SCORING[self.answer_format],
        }

    def evaluate(self, model) -> tuple[dict[str, float], dict[str, Any]]:
        continuations = [answers(sample, self.answer_format) for sample in self.samples]
        scores = choice_logprobs(model, self.tokenizer, list(zip(self.prompts, continuations)), batch_size=self.spec["batch_size"])
        if self.answer_format == "text":
            scores = [[s / len(text) for s, text in zip(row, texts)] for row, texts in zip(scores, continuations)]
        correct = defaultdict(list)
        for sample, score in zip(self.samples, scores):
            hit = float(max(range(len(score)), key=score.__getitem__) == sample["answer"])
            correct["all"].append(hit)
            correct[sample["category"]].append(hit)
        metrics = mean_and_stderr(f"{self.name}/acc", correct.pop("all"), binary=True) | {f"{self.name}/n": len(self.samples)}
        for category, hits in sorted(correct.items()):
            metrics |= mean_and_stderr(f"{self.name}/acc/{category}", hits, binary=True)
        counts = {category: len(hits) for category, hits in sorted(correct.items())}
        return metrics, self.info | {"samples_per_category": counts}


TASK_CLASS = MultipleChoice
