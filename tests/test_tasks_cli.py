"""Every knowledge task kind end to end through `python -m harness` on the tiny random model: the metrics
land in the run's record with the sample count, prompt version and scoring rule beside them."""
import pytest

from conftest import TINY, records, run_cli
from test_tasks_data import write_mmlu, write_triviaqa

FEW = "++max_samples=6"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # The 2 CPU cores are shared: two OpenMP threads spinning against other processes make the tiny model
    # many times slower than one thread. Results do not depend on it.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_offline_knowledge_tasks_record_metrics_and_protocol(tmp_path):
    run_cli(*TINY, "method=rtn", "bits=4", "group_size=32", "tasks=[trivia,facts_mc,facts_mc_text,fictional_qa]", FEW,
            "eval_batch_size=4", results_dir=tmp_path)
    (record,) = records(tmp_path)
    assert {spec["batch_size"] for spec in record["config"]["task_specs"].values()} == {4}
    metrics, tasks = record["metrics"], record["tasks"]
    assert {"trivia/lenient", "trivia/exact_match", "facts_mc/acc", "facts_mc_text/acc"} <= set(metrics)
    assert {f"fictional_qa/{mode}/{score}" for mode in ("closed_book", "open_book") for score in ("em", "f1", "llm_kick_em")} <= set(metrics)
    for name in ("trivia/lenient", "trivia/exact_match", "facts_mc/acc", "facts_mc_text/acc", "fictional_qa/open_book/em"):
        p = metrics[name]  # 0/1 scores: binomial standard error
        assert metrics[f"{name}_stderr"] == pytest.approx((p * (1 - p) / 6) ** 0.5)
    assert "fictional_qa/open_book/f1_stderr" in metrics
    assert {metrics[f"{task}/n"] for task in ("trivia", "facts_mc", "facts_mc_text", "fictional_qa")} == {6}
    assert all(0 <= value <= 1 for name, value in metrics.items() if not name.endswith("/n"))
    assert len(tasks["trivia"]["outputs"]) == 6 and len(tasks["fictional_qa"]["outputs"]["open_book"]) == 6
    for name in ("trivia", "facts_mc", "facts_mc_text", "fictional_qa"):
        assert tasks[name]["samples"] == 6 and tasks[name]["prompt_version"] and tasks[name]["scoring"]
    assert tasks["trivia"]["source"].startswith("Red-Trivia ") and tasks["trivia"]["available"] > 8000
    assert "countryinfo" in tasks["facts_mc"]["source"] and sum(tasks["facts_mc"]["samples_per_category"].values()) == 6
    assert tasks["facts_mc"]["answer_format"] == "letter" and tasks["facts_mc_text"]["answer_format"] == "text"


def test_hub_datasets_read_local_copies_in_the_hub_format(tmp_path):
    write_mmlu(tmp_path / "mmlu")
    write_triviaqa(tmp_path / "triviaqa")
    run_cli(
        *TINY, "method=none", "tasks=[mmlu,triviaqa]", FEW,
        f"++data_paths.mmlu={tmp_path / 'mmlu' / 'all'}", f"++data_paths.triviaqa={tmp_path / 'triviaqa' / 'rc'}",
        results_dir=tmp_path / "results",
    )
    (record,) = records(tmp_path / "results")
    assert record["tasks"]["mmlu"]["samples"] == 2 and record["tasks"]["mmlu"]["mean_shots_used"] == 5
    assert set(record["metrics"]) >= {"mmlu/acc", "mmlu/acc/stem", "triviaqa/open_book/em", "triviaqa/closed_book/f1"}
    assert record["tasks"]["triviaqa"]["samples"] == 1


def test_lm_eval_task_by_name_runs_on_the_compressed_model(tmp_path):
    run_cli(*TINY, "method=rtn", "bits=4", "group_size=32", "tasks=[lm_eval:harness_facts]", FEW, results_dir=tmp_path)
    (record,) = records(tmp_path)
    metrics = record["metrics"]
    assert set(metrics) == {"lm_eval:harness_facts/acc", "lm_eval:harness_facts/acc_stderr", "lm_eval:harness_facts/n"}
    acc = metrics["lm_eval:harness_facts/acc"]
    # lm-eval's closed-form stderr of a mean: sample std (n - 1) / sqrt(n), over 0/1 scores
    assert metrics["lm_eval:harness_facts/acc_stderr"] == pytest.approx((acc * (1 - acc) * 6 / 5 / 6) ** 0.5)
    assert metrics["lm_eval:harness_facts/n"] == 6
    info = record["tasks"]["lm_eval:harness_facts"]
    assert info["samples"]["harness_facts"] == {"original": 716, "effective": 6}
    documents = info["documents"]["harness_facts"]  # a seeded random sample, not the first 6
    assert len(documents) == 6 and documents == sorted(documents) and documents != list(range(6)) and max(documents) < 716
    assert info["configs"]["harness_facts"]["output_type"] == "multiple_choice" and info["versions"]["harness_facts"] == 1.0


def test_llm_kick_retrieval_prompt_end_to_end_and_its_record_diagnosed(tmp_path):
    """fictional_qa_llm_kick through `python -m harness`: the record names LLM-KICK's prompt (no solved
    example); benchmarks/knowledge_probe.py --records reads the answers back without loading a model."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    run_cli(*TINY, "method=none", "tasks=[fictional_qa_llm_kick]", FEW, "eval_batch_size=3", results_dir=tmp_path)
    (record,) = records(tmp_path)
    info = record["tasks"]["fictional_qa_llm_kick"]
    assert info["prompt_style"] == "llm_kick" and info["prompt_version"] == "icrqa/llm-kick" and info["solved_example"] is None
    assert info["max_new_tokens"] == 32 and len(info["outputs"]["open_book"]) == 6
    repo = Path(__file__).resolve().parents[1]
    probe = subprocess.run([sys.executable, "benchmarks/knowledge_probe.py", "--records", str(tmp_path)], cwd=repo,
                           capture_output=True, text=True, timeout=300, check=True)
    lines = [json.loads(line) for line in probe.stdout.splitlines()]
    assert {(line["task"], line["mode"], line["prompt_style"]) for line in lines} == {
        ("fictional_qa_llm_kick", "closed_book", "llm_kick"), ("fictional_qa_llm_kick", "open_book", "llm_kick")}
    metrics = record["metrics"]
    for line in lines:
        assert line["em"] == round(metrics[f"fictional_qa_llm_kick/{line['mode']}/em"], 3)
        assert 0 <= line["answer_anywhere_in_output"] <= 1 and 0 <= line["no_line_break"] <= 1
