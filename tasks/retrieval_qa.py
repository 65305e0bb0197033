"""In-context retrieval QA (LLM-KICK's ICRQA): each question asked closed-book and open-book (with an
evidence passage in the prompt), greedy answers scored by exact match and token F1 over the gold
aliases after SQuAD normalization; both modes reported.

Prompts (`prompt_style`): `harness` (default) starts each prompt with one solved example in the same
mode (SOLVED_EXAMPLE: a fixed invented fact of a kind no question asks about, so that copying from it
never scores): without it small models answer "The answer is: ..." or restate the question, and exact
match then measures the format, not the retrieval. `llm_kick` is LLM-KICK's own template (evidence,
"Based on these texts, answer these questions:", "Q: ... A:"), zero-shot, for numbers comparable with
its ICRQA; `fictional_qa_llm_kick` asks the fictional passages that way.

Datasets:
  * `fictional` (offline, default): passages generated with a seeded RNG about invented people, towns
    and societies, several per passage, each question about one of them. No model can know these
    facts, so closed-book scores sit at chance and open-book measures retrieval from the context alone.
  * `triviaqa`: TriviaQA rc validation (mandarjoshi/trivia_qa, config rc). The evidence is built as
    LLM-KICK's incontext_qa/main_icrqa.py builds it: the question's first Wikipedia page and first web
    result joined, cut to the first `passage_chars` (3072) characters, wherever the answer is (it may
    not be in the passage at all: `answer_in_passage` in the record is the share where some alias is).
    Offline: `data_paths.triviaqa=` a folder with the hub's rc/validation-*.parquet.

Answers are greedy, `max_new_tokens` long (32, LLM-KICK's `max_length=len(input_ids) + 32`), and the prediction is the first non-empty line of the
output, stripped, as LLM-KICK extracts it (a model that opens with a newline is not scored empty).
Besides SQuAD's exact match and F1, `llm_kick_em` is LLM-KICK's ICRQA "exact match": after TriviaQA's
normalization, the gold alias is inside the prediction or the prediction inside the gold alias (so an
answer that restates the question around the right name counts, and so does an empty prediction);
`empty` is the share of predictions with no words.
"""
from __future__ import annotations

import random
import re
import string
from typing import Any

from harness.config import ConfigError
from harness.data import load_hub_dataset
from harness.generation import exact_match, greedy_generate, normalize_answer, token_f1
from harness.tasks.common import SampledTask, mean_and_stderr, take_sample

PROMPTS = {
    "harness": {
        "closed_book": "Answer the question with a short answer.\nQuestion: {question}\nAnswer:",
        "open_book": "Answer the question with a short answer, using the passage.\nPassage: {passage}\nQuestion: {question}\nAnswer:",
    },
    # LLM-KICK's incontext_qa/main_icrqa.py gen_prompt + eval: evidence, a blank line, the instruction;
    # the whole prompt stripped (so closed-book starts at "Answer"), no solved example.
    "llm_kick": {
        "closed_book": "Answer these questions:\n\nQ: {question}\nA:",
        "open_book": "{passage}\n\nBased on these texts, answer these questions:\n\nQ: {question}\nA:",
    },
}
PROMPT_VERSIONS = {
    "harness": "icrqa/v3",  # v2 added a solved example; v3 made it share no kind of answer with the questions
    "llm_kick": "icrqa/llm-kick",
}
SOLVED_EXAMPLE = {
    "passage": "The Orrel Bridge crosses the river Tamsk. Its keeper, Ysolde Varn, opens it at dawn.",
    "question": "Which river does the Orrel Bridge cross?",
    "answer": "Tamsk",
}
SCORING = {
    "prediction": "first non-empty line of the greedy output, stripped (LLM-KICK's extraction)",
    "em": "SQuAD-normalized prediction equals some normalized gold alias; stderr binomial",
    "f1": "SQuAD token F1, best over gold aliases; stderr sample std / sqrt(n)",
    "llm_kick_em": "LLM-KICK's ICRQA exact_match_score: TriviaQA-normalized alias in prediction or prediction in alias; stderr binomial",
    "empty": "share of predictions that normalize to nothing",
}


def prediction(output: str) -> str:
    """LLM-KICK's `output.strip().split("\n")[0]`."""
    return output.strip().split("\n")[0]


def triviaqa_normalize(text: str) -> str:
    """TriviaQA's official normalize_answer (LLM-KICK's utils/triviaqa_evaluation.py): underscores and
    punctuation (with typographic quotes) become spaces, lowercase, articles dropped, spaces collapsed."""
    text = str(text).replace("_", " ").lower()
    text = "".join(" " if ch in _TRIVIAQA_PUNCTUATION else ch for ch in text)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


_TRIVIAQA_PUNCTUATION = set(string.punctuation + "‘’´`")


def llm_kick_em(predicted: str, golds: list[str]) -> float:
    """LLM-KICK's ICRQA exact_match_score, best over the gold aliases."""
    p = triviaqa_normalize(predicted)
    return float(any(triviaqa_normalize(g) in p or p in triviaqa_normalize(g) for g in golds))


# --- fictional passages --------------------------------------------------------------------------

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou"]
_CODAS = ["", "n", "r", "l", "s", "th", "rn", "sk"]
_TOWN_ENDINGS = ["dale", "port", "wick", "haven", "mere", "ford", "holm", "stead"]
_SOCIETIES = ["Society", "Guild", "Company", "Institute", "Circle", "League"]
PROFESSIONS = [
    "glassblower", "cartographer", "beekeeper", "clockmaker", "violinist", "botanist", "architect", "sculptor",
    "astronomer", "shipwright", "bookbinder", "weaver",
]
QUESTIONS = {
    "town": "In which town was {name} born?",
    "year": "In what year was {name} born?",
    "profession": "What was {name}'s profession?",
    "society": "Which organization did {name} found?",
}


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).capitalize()


def _person(rng: random.Random) -> dict[str, str]:
    return {
        "name": f"{_word(rng, 2)} {_word(rng, rng.choice([2, 3]))}",
        "town": _word(rng, 2) + rng.choice(_TOWN_ENDINGS),
        "year": str(rng.randint(1620, 1950)),
        "profession": rng.choice(PROFESSIONS),
        "society": f"the {_word(rng, 2)} {rng.choice(_SOCIETIES)}",
    }


def _biography(person: dict[str, str], founded: int) -> str:
    return (
        f"{person['name']} was {_indefinite(person['profession'])} born in {person['town']} in {person['year']}. "
        f"In {founded}, {person['name']} founded {person['society']}."
    )


def _indefinite(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def fictional_questions(count: int, seed: int = 0, people_per_passage: int = 3) -> list[dict[str, Any]]:
    """`count` passages about invented people, each with one question about one of them. The people of
    one passage share no name, town, year or society, so only the right sentence answers."""
    rng = random.Random(seed)
    questions = []
    while len(questions) < count:
        people = [_person(rng) for _ in range(people_per_passage)]
        if any(len({p[key] for p in people}) < len(people) for key in ("name", "town", "year", "society")):
            continue  # a repeated value would make the question ambiguous
        passage = " ".join(_biography(p, int(p["year"]) + rng.randint(20, 50)) for p in people)
        subject, asked = rng.choice(people), rng.choice(sorted(QUESTIONS))
        answers = [subject[asked]] + ([subject[asked][len("the ") :]] if asked == "society" else [])
        questions.append({"question": QUESTIONS[asked].format(name=subject["name"]), "answers": answers, "passage": passage, "kind": asked})
    return questions


# --- TriviaQA ------------------------------------------------------------------------------------


def triviaqa_questions(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """(sampled questions with their evidence, questions available). The sample is drawn before any
    row is read into Python: the split holds ~18k questions with whole web pages."""
    rows = load_hub_dataset("triviaqa", ("mandarjoshi/trivia_qa", "rc"), spec.get("split", "validation"), spec.get("data_path"), "parquet")
    questions = []
    for row in rows.select(take_sample(range(len(rows)), spec.get("max_samples"), spec["seed"])):
        answers = list(dict.fromkeys([row["answer"]["value"], *row["answer"]["aliases"]]))
        passage = llm_kick_evidence(row["entity_pages"]["wiki_context"], row["search_results"]["search_context"], spec["passage_chars"])
        questions.append({
            "question": row["question"], "answers": answers, "kind": "triviaqa", "passage": passage,
            "answer_in_passage": any(f" {a} " in f" {normalize_answer(passage)} " for a in map(normalize_answer, answers) if a),
        })
    return questions, len(rows)


def llm_kick_evidence(wiki_pages: list[str], web_results: list[str], chars: int) -> str:
    """LLM-KICK's context: the first Wikipedia page, then the first web result, joined as they are,
    cut to the first `chars` characters (`context[:3072]`)."""
    return "".join(wiki_pages[:1] + web_results[:1])[:chars]


def _fictional(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    questions = fictional_questions(spec["size"], spec["seed"], spec["people_per_passage"])
    return take_sample(questions, spec.get("max_samples"), spec["seed"]), len(questions)


SOURCES = {
    "fictional": (_fictional, lambda spec: f"generated (seed {spec['seed']}, {spec['people_per_passage']} people per passage)"),
    "triviaqa": (triviaqa_questions, lambda spec: spec.get("data_path") or "hub:mandarjoshi/trivia_qa rc"),
}


def solved_example(mode: str) -> str:
    return PROMPTS["harness"][mode].format(**SOLVED_EXAMPLE) + f" {SOLVED_EXAMPLE['answer']}\n\n"


def build_prompt(style: str, mode: str, sample: dict[str, Any]) -> str:
    """The prompt a question is asked with: ours opens with the solved example; LLM-KICK's is its own
    template, stripped as its script strips it."""
    if style == "llm_kick":
        return PROMPTS[style][mode].format(question=sample["question"], passage=sample["passage"]).strip()
    return solved_example(mode) + PROMPTS[style][mode].format(question=sample["question"], passage=sample["passage"])


class RetrievalQA(SampledTask):
    @staticmethod
    def resolve(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        style = spec.get("prompt_style", "harness")
        if style not in PROMPTS:
            raise ConfigError(f"prompt_style={style!r}: known styles are {', '.join(PROMPTS)}")
        return SampledTask.resolve(spec, config) | {"prompt_style": style}

    def prepare(self, tokenizer) -> None:
        load, describe = SOURCES[self.spec["dataset"]]
        self.style = self.spec["prompt_style"]
        self.samples, available = load(self.spec)
        self.tokenizer = tokenizer  # generation needs it after the model loads
        self.info = {
            "dataset": self.spec["dataset"],
            "source": describe(self.spec),
            "available": available,
            "samples": len(self.samples),
            "modes": self.spec["modes"],
            "prompt_style": self.style,
            "prompt_version": PROMPT_VERSIONS[self.style],
            "prompts": {mode: PROMPTS[self.style][mode] for mode in self.spec["modes"]},
            "solved_example": {mode: solved_example(mode) for mode in self.spec["modes"]} if self.style == "harness" else None,
            "scoring": SCORING,
            "answer_in_passage": sum(s.get("answer_in_passage", True) for s in self.samples) / max(len(self.samples), 1),
            "max_new_tokens": self.spec["max_new_tokens"],
        }

    def evaluate(self, model) -> tuple[dict[str, float], dict[str, Any]]:
        metrics, outputs_info = {f"{self.name}/n": len(self.samples)}, {}
        for mode in self.spec["modes"]:
            prompts = [build_prompt(self.style, mode, s) for s in self.samples]
            outputs = greedy_generate(
                model, self.tokenizer, prompts, max_new_tokens=self.spec["max_new_tokens"], batch_size=self.spec["batch_size"],
            )
            metrics |= score(f"{self.name}/{mode}", [prediction(o) for o in outputs], [s["answers"] for s in self.samples])
            outputs_info[mode] = [{"question": s["question"], "answers": s["answers"], "output": o} for s, o in zip(self.samples, outputs)]
        return metrics, self.info | {"outputs": outputs_info}


def score(prefix: str, predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    pairs = list(zip(predictions, golds))
    return (
        mean_and_stderr(f"{prefix}/em", [exact_match(p, g) for p, g in pairs], binary=True)
        | mean_and_stderr(f"{prefix}/f1", [token_f1(p, g) for p, g in pairs], binary=False)
        | mean_and_stderr(f"{prefix}/llm_kick_em", [llm_kick_em(p, g) for p, g in pairs], binary=True)
        | {f"{prefix}/empty": sum(not normalize_answer(p) for p in predictions) / len(pairs)}
    )


TASK_CLASS = RetrievalQA
