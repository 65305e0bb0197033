"""Answer scoring (SQuAD normalization, EM, F1, LLM-KICK's lenient rule) on hand-computed cases, and the
evidence window TriviaQA's open-book prompts use."""
import math

import pytest

from harness.generation import contains_answer, cut_at_stop, exact_match, normalize_answer, token_f1
from harness.tasks.retrieval_qa import evidence_window


def test_normalization_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("  The Quick, brown  fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("U.S.A.") == "usa"


def test_exact_match_takes_the_best_alias():
    assert exact_match("the Beatles.", ["Fab Four", "Beatles"]) == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0


@pytest.mark.parametrize(
    "prediction, golds, expected",
    [
        # quick brown fox vs quick fox jumps: 2 common of 3 and 3 -> P = R = 2/3
        ("the quick brown fox", ["quick fox jumps"], 2 / 3),
        # vs 'paris': P 1/2, R 1 -> 2/3; vs 'france paris region': P 1, R 2/3 -> 0.8; best 0.8
        ("Paris France", ["Paris", "France Paris region"], 0.8),
        ("nothing shared", ["Paris"], 0.0),
        ("", ["Paris"], 0.0),
    ],
)
def test_token_f1_by_hand(prediction, golds, expected):
    assert math.isclose(token_f1(prediction, golds), expected)


def test_lenient_counts_an_alias_anywhere_as_whole_words():
    assert contains_answer("It is Oklahoma City, I think.", ["OKC", "Oklahoma City"]) == 1.0
    assert contains_answer("a camera", ["Ra"]) == 0.0  # not inside another word
    assert contains_answer("The answer", ["the"]) == 0.0  # an alias that normalizes to nothing never matches
    assert exact_match("It is Oklahoma City", ["Oklahoma City"]) == 0.0  # strict differs from lenient


def test_output_is_cut_at_the_first_stop_string():
    assert cut_at_stop("Paris\nQuestion: what", ["\n"]) == "Paris"
    assert cut_at_stop("Paris. Next", ["\n", ". "]) == "Paris"
    assert cut_at_stop("Paris", ["\n"]) == "Paris"


def test_evidence_window_centres_on_the_first_alias_mention():
    documents = ["no mention here", "Once upon a time, The Beatles, a band from Liverpool, sang songs."]
    # 'beatles' is word 5 of the second document; a 4-word window starts 2 words before it.
    assert evidence_window(documents, ["The Beatles", "Fab Four"], 4) == "time, The Beatles, a"
    assert evidence_window(["alpha beta gamma"], ["zeta"], 2) == "alpha beta"  # no mention: the start


def test_lm_eval_results_flatten_to_numeric_metrics_named_by_task_and_filter():
    from harness.tasks.lm_eval_harness import flatten_results

    results = {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": "N/A", "acc_norm,none": 0.25},
               "gsm8k": {"exact_match,strict-match": 0.125, "sample_len": 8}}
    assert flatten_results(results) == {
        "lm_eval:arc_easy/acc": 0.5, "lm_eval:arc_easy/acc_norm": 0.25, "lm_eval:gsm8k/exact_match/strict-match": 0.125,
    }
