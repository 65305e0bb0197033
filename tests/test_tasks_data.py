"""The knowledge tasks' data: offline sets from installed packages and the seeded generator, and the hub
loaders' parsing of local files in the hub's own formats (FreebaseQA JSON, MMLU and TriviaQA parquet)."""
import json

import pandas as pd

from harness.tasks.factoid_qa import _freebase_aliases, freebaseqa_questions, red_trivia_questions
from harness.tasks.multiple_choice import LETTERS, fact_questions, mmlu_questions
from harness.tasks.retrieval_qa import QUESTIONS, fictional_questions, triviaqa_questions


def test_red_trivia_is_read_from_the_installed_package_without_picture_questions():
    questions = red_trivia_questions()
    assert len(questions) > 8000 and len({q["category"] for q in questions}) > 25
    assert not any("http" in q["question"] for q in questions)
    assert all(q["answers"] and all(isinstance(a, str) for a in q["answers"]) for q in questions)


def test_fact_questions_have_one_right_answer_among_distinct_seeded_choices():
    questions, shots = fact_questions(seed=0)
    assert {q["category"] for q in questions} == {"capital", "region", "element_symbol", "atomic_number"}
    assert all(len(examples) == 5 for examples in shots.values())
    for q in questions:
        assert len(set(q["choices"])) == len(LETTERS) and 0 <= q["answer"] < len(LETTERS)
    iron = next(q for q in questions if q["question"] == "What is the chemical symbol of Iron?")
    assert iron["choices"][iron["answer"]] == "Fe"
    assert fact_questions(seed=0) == (questions, shots) and fact_questions(seed=1)[0] != questions


def test_fictional_passages_answer_their_question_only_in_context():
    questions = fictional_questions(50, seed=3)
    assert questions == fictional_questions(50, seed=3)
    assert {q["kind"] for q in questions} == set(QUESTIONS)
    for q in questions:
        assert q["answers"][0] in q["passage"] and q["answers"][0] not in q["question"]


def test_freebaseqa_official_json_and_hub_columns_give_the_same_aliases(tmp_path):
    parses = [
        {"Parse-Id": "p1", "Answers": [{"AnswersMid": "m.1", "AnswersName": ["paris"]}]},
        {"Parse-Id": "p2", "Answers": [{"AnswersMid": "m.2", "AnswersName": ["paris, france"]}]},
    ]
    release = {"Dataset": "FreebaseQA-eval", "Version": "1.0", "Questions": [
        {"Question-ID": "FreebaseQA-eval-0", "RawQuestion": "Which city is the capital of France?",
         "ProcessedQuestion": "which city is the capital of france", "Parses": parses},
    ]}
    path = tmp_path / "FreebaseQA-eval.json"
    path.write_text(json.dumps(release))
    (question,) = freebaseqa_questions(data_path=str(path))
    assert question["question"] == "Which city is the capital of France?"
    assert question["answers"] == ["paris", "paris, france"]
    # datasets stores a sequence of records as a dict of columns
    hub = {"Parse-Id": ["p1", "p2"], "Answers": [{"AnswersMid": ["m.1"], "AnswersName": [["paris"]]},
                                                  {"AnswersMid": ["m.2"], "AnswersName": [["paris, france"]]}]}
    assert _freebase_aliases(hub) == question["answers"]


def write_mmlu(folder):
    """cais/mmlu's `all` config layout: all/{test,dev}-00000-of-00001.parquet."""
    (folder / "all").mkdir(parents=True)
    row = {"question": "What is 2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}
    pd.DataFrame([row, row | {"question": "What is 3 + 3?", "answer": 3}]).to_parquet(folder / "all" / "test-00000-of-00001.parquet")
    pd.DataFrame([row | {"question": f"What is {i} + 0?"} for i in range(5)]).to_parquet(folder / "all" / "dev-00000-of-00001.parquet")


ABBEY_ROAD = "Abbey Road is an album. It was recorded by The Beatles in 1969 in London."


def write_triviaqa(folder, wiki=(ABBEY_ROAD,), web=()):
    """mandarjoshi/trivia_qa's `rc` layout: rc/validation-*.parquet with nested evidence and answer columns."""
    (folder / "rc").mkdir(parents=True)
    row = {
        "question": "Which band recorded Abbey Road?", "question_id": "tc_1", "question_source": "http://example.org",
        "entity_pages": {"doc_source": ["TagMe"] * len(wiki), "filename": ["Abbey_Road.txt"] * len(wiki),
                         "title": ["Abbey Road"] * len(wiki), "wiki_context": list(wiki)},
        "search_results": {"description": [""] * len(web), "filename": ["w.txt"] * len(web), "rank": list(range(len(web))),
                           "title": [""] * len(web), "url": [""] * len(web), "search_context": list(web)},
        "answer": {"aliases": ["The Beatles", "Beatles"], "normalized_aliases": ["beatles"], "matched_wiki_entity_name": "",
                   "normalized_matched_wiki_entity_name": "", "normalized_value": "beatles", "type": "WikipediaEntity",
                   "value": "The Beatles"},
    }
    pd.DataFrame([row]).to_parquet(folder / "rc" / "validation-00000-of-00001.parquet")


def test_mmlu_parquet_gives_test_questions_and_dev_shots_by_subject(tmp_path):
    write_mmlu(tmp_path)
    questions, shots = mmlu_questions(str(tmp_path / "all"))
    assert [q["answer"] for q in questions] == [1, 3]
    assert questions[0]["category"] == "stem" and questions[0]["topic"] == "elementary mathematics"
    assert len(shots["elementary mathematics"]) == 5


def test_triviaqa_parquet_gives_aliases_and_llm_kicks_evidence(tmp_path):
    write_triviaqa(tmp_path)
    spec = {"data_path": str(tmp_path / "rc"), "max_samples": None, "seed": 0, "passage_chars": 3072}
    (question,), available = triviaqa_questions(spec)
    assert available == 1
    assert question["answers"] == ["The Beatles", "Beatles"]
    assert question["passage"] == ABBEY_ROAD


def test_triviaqa_evidence_is_not_placed_around_the_answer(tmp_path):
    """LLM-KICK's main_icrqa.py: the first Wikipedia page + the first web result, joined, first 3072
    characters, wherever the answer is: a window centred on the gold answer leaks where it is."""
    filler = "Abbey Road Studios stands in St John's Wood. " * 80  # 3,600 characters
    write_triviaqa(tmp_path, wiki=[filler + ABBEY_ROAD, "a second page"], web=["It was the band's last album."])
    spec = {"data_path": str(tmp_path / "rc"), "max_samples": None, "seed": 0, "passage_chars": 3072, "passage_words": 300}
    (question,), _ = triviaqa_questions(spec)
    assert question["passage"] == filler[:3072] and "Beatles" not in question["passage"]
    assert question["answer_in_passage"] is False
    short = tmp_path / "short"
    write_triviaqa(short, wiki=[ABBEY_ROAD], web=["It was the band's last album."])
    (question,), _ = triviaqa_questions(spec | {"data_path": str(short / "rc")})
    assert question["passage"] == ABBEY_ROAD + "It was the band's last album."  # joined as LLM-KICK joins them
    assert question["answer_in_passage"] is True


def test_cnn_dailymail_parquet_stories_fall_into_length_buckets(tmp_path):
    from harness.tasks.summarization import cnn_dailymail_stories

    (tmp_path / "3.0.0").mkdir()
    rows = [{"article": "word " * n, "highlights": "h", "id": f"id{n}"} for n in (10, 20, 500, 900)]
    pd.DataFrame(rows).to_parquet(tmp_path / "3.0.0" / "test-00000-of-00001.parquet")
    spec = {"data_path": str(tmp_path / "3.0.0"), "seed": 0, "words": {"short": [0, 400], "medium": [400, 800], "long": [800, 1600]}}
    stories = cnn_dailymail_stories(spec, per_bucket=2)
    assert [(s["bucket"], s["id"]) for s in stories] == [("short", "id10"), ("short", "id20"), ("medium", "id500"), ("long", "id900")]


def test_mt_bench_fastchat_questions_keep_turns_and_references(tmp_path):
    from harness.tasks.instruction_following import mt_bench_conversations

    lines = [
        {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Now shorten it."]},
        {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]},
    ]
    path = tmp_path / "question.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    conversations = mt_bench_conversations(str(path))
    assert conversations == [
        {"category": "writing", "turns": ["Write a poem.", "Now shorten it."], "reference": []},
        {"category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]},
    ]
