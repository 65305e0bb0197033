"""Dataset of the lm-eval task harness_facts.yaml (lm-eval's `!function` loads this file by path)."""
import datasets

from harness.tasks.multiple_choice import fact_questions


def load(seed: int = 0, **_metadata) -> datasets.DatasetDict:
    """The fact questions (test) and their solved examples (dev); lm-eval passes its metadata as keywords."""
    questions, shots = fact_questions(seed)
    return datasets.DatasetDict({
        "test": datasets.Dataset.from_list(questions),
        "dev": datasets.Dataset.from_list([example for examples in shots.values() for example in examples]),
    })
