"""Answer scoring on hand-computed cases: SQuAD normalization, EM, F1, our whole-word lenient rule, LLM-KICK's
own factoid and ICRQA rules, the answer extraction, and standard errors."""
import math

import pytest

from harness.generation import contains_answer, cut_at_stop, exact_match, normalize_answer, token_f1
from harness.tasks.common import mean_and_stderr
from harness.tasks.factoid_qa import _first_answer, llm_kick_match
from harness.config import ConfigError
from harness.tasks.retrieval_qa import RetrievalQA, build_prompt, llm_kick_em, prediction, solved_example


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


def test_llm_kick_factoid_rule_is_a_substring_after_lowercasing_and_removing_spaces():
    """LLM-KICK's validate_response: no punctuation or article handling, no word boundaries."""
    assert llm_kick_match("The answer is Oklahoma City.", ["oklahoma city"]) == 1.0
    assert llm_kick_match("a camera", ["Ra"]) == 1.0  # inside another word: counted (our lenient rule does not)
    assert contains_answer("a camera", ["Ra"]) == 0.0
    assert llm_kick_match("Paris, France", ["Paris France"]) == 0.0  # the comma is not removed
    assert llm_kick_match("P a r i s", ["Paris"]) == 1.0  # spaces are


def test_llm_kick_takes_the_first_answer_of_the_first_parse():
    parses = [{"Answers": [{"AnswersName": ["paris", "paris, france"]}, {"AnswersName": ["lutetia"]}]},
              {"Answers": [{"AnswersName": ["city of light"]}]}]
    assert _first_answer(parses) == ["paris", "paris, france"]
    hub = {"Answers": [{"AnswersMid": ["m.1", "m.2"], "AnswersName": [["paris", "paris, france"], ["lutetia"]]},
                       {"AnswersMid": ["m.3"], "AnswersName": [["city of light"]]}]}
    assert _first_answer(hub) == ["paris", "paris, france"]


def test_prediction_is_the_first_non_empty_line_and_llm_kicks_icrqa_em_is_containment_either_way():
    assert prediction("\n Tamsk\nQuestion: x") == "Tamsk"  # a leading newline is not an empty answer
    assert llm_kick_em("It was born in Tamsk", ["Tamsk"]) == 1.0  # gold inside the prediction
    assert llm_kick_em("John", ["John Smith"]) == 1.0  # prediction inside the gold
    assert llm_kick_em("", ["Tamsk"]) == 1.0  # so an empty prediction counts: `empty` reports how often
    assert llm_kick_em("Rome", ["Tamsk"]) == 0.0
    assert llm_kick_em("o'neill_jr", ["O Neill Jr"]) == 1.0  # TriviaQA's normalization: punctuation and _ -> space


def test_standard_errors_binomial_for_0_1_scores_sample_std_for_graded_ones():
    assert mean_and_stderr("t/acc", [1, 0, 0, 1], binary=True) == {"t/acc": 0.5, "t/acc_stderr": 0.25}
    graded = mean_and_stderr("t/f1", [0.0, 0.5, 1.0], binary=False)  # sample std 0.5, / sqrt(3)
    assert graded["t/f1"] == 0.5 and math.isclose(graded["t/f1_stderr"], 0.5 / math.sqrt(3))
    assert mean_and_stderr("t/x", [], binary=True) == {}


def test_lm_eval_results_flatten_to_numeric_metrics_named_by_task_and_filter():
    from harness.tasks.lm_eval_harness import flatten_results

    results = {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.05, "acc_norm,none": 0.25,
                            "acc_norm_stderr,none": "N/A"},
               "gsm8k": {"exact_match,strict-match": 0.125, "sample_len": 8}}
    assert flatten_results(results) == {
        "lm_eval:arc_easy/acc": 0.5, "lm_eval:arc_easy/acc_stderr": 0.05, "lm_eval:arc_easy/acc_norm": 0.25,
        "lm_eval:gsm8k/exact_match/strict-match": 0.125,
    }


def _llm_kick_icrqa_prompt(question: str, context: str | None) -> str:
    """LLM-KICK's incontext_qa/main_icrqa.py, transcribed: gen_prompt, then `f"{context[:3072]}\\n\\n{prompt_end}"`
    stripped (closed-book: no evidence, so the context is empty)."""
    if context is None:
        prompt_end = f"Answer these questions:\n\nQ: {question}\nA:"
        return f"{''[:3072]}\n\n{prompt_end}".strip()
    prompt_end = f"Based on these texts, answer these questions:\n\nQ: {question}\nA:"
    return f"{context[:3072]}\n\n{prompt_end}".strip()


def test_llm_kick_prompt_style_builds_llm_kicks_own_prompt():
    sample = {"question": "In which town was Ba Kor born?", "passage": "Ba Kor was a weaver born in Zeldale in 1701.", "answers": ["Zeldale"]}
    assert build_prompt("llm_kick", "open_book", sample) == _llm_kick_icrqa_prompt(sample["question"], sample["passage"])
    assert build_prompt("llm_kick", "closed_book", sample) == _llm_kick_icrqa_prompt(sample["question"], None)
    ours = build_prompt("harness", "open_book", sample)
    assert ours.startswith(solved_example("open_book")) and ours.endswith("Question: In which town was Ba Kor born?\nAnswer:")


def test_unknown_prompt_style_is_a_config_error_when_settings_resolve():
    spec = {"task": "retrieval_qa", "dataset": "fictional", "prompt_style": "chatty", "max_samples": 5, "batch_size": 1}
    with pytest.raises(ConfigError, match="prompt_style='chatty'"):
        RetrievalQA.resolve(spec, {})
    assert RetrievalQA.resolve(spec | {"prompt_style": "llm_kick"}, {})["prompt_style"] == "llm_kick"
