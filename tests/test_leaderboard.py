"""The leaderboard's table logic on synthetic records: baseline matching, changes, standard-error
verdicts, Pareto fronts against a brute-force definition, failed runs apart, and the CLI's files."""
import itertools
import math
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import leaderboard, results, table
from synthetic_records import grid, record

ROOT = Path(__file__).resolve().parents[1]


def board_of(tmp_path, records):
    for rec in records:
        results.write(tmp_path, rec)
    return table.tabulate(results.load([tmp_path]))


def row(board, setting, model="m"):
    (index,) = np.flatnonzero((board.runs.setting == setting) & (board.runs.model == model))
    return board.runs.iloc[index]


def test_metric_directions():
    assert table.direction("pydoc/ppl") == -1
    assert table.direction("lm_eval:wikitext/word_perplexity") == -1
    assert table.direction("facts_mc/acc") == 1
    assert table.direction("fictional_qa/open_book/f1") == 1
    assert table.direction("facts_mc/acc_stderr") == 0
    assert table.direction("facts_mc/n") == 0
    assert table.direction("fact_instructions/rated_fraction") == 0
    assert table.headline(["facts_mc/acc", "facts_mc/acc/capital", "pydoc/ppl"]) == ["facts_mc/acc", "pydoc/ppl"]


def test_each_run_meets_the_dense_run_of_its_own_model_and_settings(tmp_path):
    board = board_of(tmp_path, [
        record(model="a", method="none", bits=16, ppl=10.0, finished_at="2026-12-01T01:00:00+0000"),
        record(model="a", method="none", bits=16, ppl=10.5, seed=1, finished_at="2026-12-01T02:00:00+0000"),
        record(model="b", method="none", bits=16, ppl=20.0),
        record(model="a", method="rtn", bits=4, ppl=12.6),
        record(model="b", method="rtn", bits=4, ppl=30.0),
        record(model="a", method="rtn", bits=3, ppl=15.0, max_samples=50),   # other evaluation settings
        record(model="a", method="gptq", bits=4, ppl=11.0, seqlen=512),      # other perplexity window
    ])
    latest_dense_a = board.runs[(board.runs.model == "a") & board.runs.dense & (board.runs["pydoc/ppl"] == 10.5)].run_id.item()
    assert row(board, "rtn w4g64", "a").baseline == latest_dense_a
    assert row(board, "rtn w4g64", "a")["pydoc/ppl delta"] == pytest.approx(2.1)
    assert row(board, "rtn w4g64", "a")["pydoc/ppl rel"] == pytest.approx(0.2)
    assert row(board, "rtn w4g64", "b")["pydoc/ppl rel"] == pytest.approx(0.5)
    for setting in ("rtn w3g64", "gptq w4g64"):
        assert row(board, setting, "a").baseline == table.NO_BASELINE
        assert math.isnan(row(board, setting, "a")["pydoc/ppl delta"])
    assert board.runs["eval"].nunique() == 4  # a, b, a with max_samples=50, a with seqlen=512
    assert "no dense run" in table.markdown(board)


def test_changes_within_the_combined_stderr_are_no_wins(tmp_path):
    board = board_of(tmp_path, [
        record(method="none", bits=16, ppl=10.0, acc=0.40, acc_stderr=0.02),
        record(method="rtn", bits=8, ppl=9.9, acc=0.42, acc_stderr=0.02),  # +0.02 < sqrt(2) * 0.02
        record(method="rtn", bits=4, ppl=12.0, acc=0.30, acc_stderr=0.02),  # -0.10: a real loss
        record(method="rtn", bits=3, ppl=15.0, acc=0.46, acc_stderr=0.02),  # +0.06: a real gain
        record(method="rtn", bits=2, ppl=99.0, acc=0.37, acc_stderr=float("nan")),  # only the baseline's 0.02
    ])
    verdict = {s: row(board, s)["facts_mc/acc vs dense"] for s in ("rtn w8g64", "rtn w4g64", "rtn w3g64", "rtn w2g64")}
    assert verdict == {"rtn w8g64": "within stderr", "rtn w4g64": "worse", "rtn w3g64": "better", "rtn w2g64": "worse"}
    # Perplexity carries no stderr: every change counts, lower is better.
    assert row(board, "rtn w8g64")["pydoc/ppl vs dense"] == "better"
    assert row(board, "rtn w4g64")["pydoc/ppl vs dense"] == "worse"
    assert "(~+5.0%)" in table.markdown(board)


def test_failed_runs_are_listed_apart_with_their_errors(tmp_path):
    board = board_of(tmp_path, [
        record(method="none", bits=16),
        record(method="gptq", bits=3, status="failed", error="RuntimeError: CUDA out of memory"),
        record(method="awq", bits=3, status="interrupted", error="KeyboardInterrupt: "),
    ])
    assert list(board.runs.method) == ["none"]
    assert sorted(board.failed.status) == ["failed", "interrupted"]
    assert "RuntimeError: CUDA out of memory" in set(board.failed.error)
    assert "| gptq w3g64 | failed | RuntimeError: CUDA out of memory |" in table.markdown(board)


def brute_force_front(x, y, xd, yd):
    points = [(a * xd, b * yd) for a, b in zip(x, y)]
    def dominated(i):
        a, b = points[i]
        return any(c >= a and d >= b and (c > a or d > b) for j, (c, d) in enumerate(points) if j != i and not math.isnan(c + d))
    return np.array([not math.isnan(sum(points[i])) and not dominated(i) for i in range(len(points))])


@pytest.mark.parametrize("seed", range(40))
def test_pareto_front_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    x = rng.integers(0, 6, n).astype(float)   # few values: many ties
    y = rng.integers(0, 6, n).astype(float)
    x[rng.random(n) < 0.1] = np.nan
    for xd, yd in itertools.product((1, -1), repeat=2):
        np.testing.assert_array_equal(table.pareto_front(x, y, xd, yd), brute_force_front(x, y, xd, yd))


def test_pareto_front_of_bits_against_perplexity():
    # 16 bits dense at ppl 10, 4.3 bits at 13, 3.3 at 33, another 4.3 at 14 (dominated), 9 bits at 380 (dominated)
    front = table.pareto_front([16, 4.3, 3.3, 4.3, 9], [10, 13, 33, 14, 380], -1, table.direction("pydoc/ppl"))
    assert front.tolist() == [True, True, True, False, False]


def test_cli_writes_page_csv_and_markdown(tmp_path):
    for rec in grid(60):
        results.write(tmp_path / "a", rec)
    extra = record(model="model-0", method="rtn", bits=2, ppl=500.0, acc=0.25, decode=99.0, seed=1000)
    results.write(tmp_path / "b", extra)
    out = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "harness.leaderboard", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    csv = pd.read_csv(out / "leaderboard.csv")
    ok = [r for r in grid(60) if r["status"] == "ok"]
    assert len(csv) == len(ok) + 1 and extra["run_id"] in set(csv.run_id)
    page = (out / "index.html").read_text()
    assert page.count("<svg") >= 4 * 2 * 2  # 4 models x 2 headline scores x (bits, decode speed)
    assert "LLM-KICK view" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "### E1: model-0" in (out / "leaderboard.md").read_text()


def test_cli_rejects_a_folder_without_runs(tmp_path, capsys):
    assert leaderboard.main([str(tmp_path), "--out", str(tmp_path / "site")]) == 2
    assert capsys.readouterr().err.startswith("error: no runs/ folder in")
    assert not (tmp_path / "site").exists()


def test_results_table_script_prints_the_same_table(tmp_path, capsys):
    for rec in grid(20):
        results.write(tmp_path, rec)
    runpy.run_path(str(ROOT / "benchmarks" / "results_table.py"), run_name="results_table")["main"]([str(tmp_path)])
    printed = capsys.readouterr().out
    assert printed.strip() == table.markdown(table.tabulate(results.load(tmp_path))).strip()
    assert "model-3" in printed
