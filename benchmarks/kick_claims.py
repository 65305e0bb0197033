"""The LLM-KICK table with its error bars: every score as value ± standard error, and each change against
the dense baseline marked only when it is larger than twice the combined standard error
(sqrt(se_run^2 + se_dense^2), harness/table.py), the bar issue 12 sets for calling a claim held.

    python benchmarks/kick_claims.py <results_dir>... [--metrics pydoc/ppl,trivia/lenient,...]

A cell reads `0.306 ± 0.015 ▼` (worse than dense beyond 2 SE), `▲` (better), or no mark (within 2 SE).
"""
from __future__ import annotations

import argparse

import numpy as np

from harness import results, table

DEFAULT_METRICS = (
    "pydoc/ppl", "trivia/exact_match", "trivia/lenient", "trivia_llm_kick/llm_kick", "facts_mc_text/acc",
    "fictional_qa/closed_book/f1", "fictional_qa/open_book/em", "fictional_qa/open_book/f1",
    "fictional_qa/open_book/llm_kick_em",
)


def cell(run, metric: str, base) -> str:
    value, se = run[metric], run[f"{metric} stderr"]
    if np.isnan(value):
        return "-"
    text = f"{value:,.2f}" if metric.endswith("ppl") else f"{value:.3f}"
    if not np.isnan(se):
        text += f" ± {se:.3f}"
    if base is None or run["dense"]:
        return text
    combined = np.sqrt(np.nan_to_num(se) ** 2 + np.nan_to_num(base[f"{metric} stderr"]) ** 2)
    delta = run[f"{metric} delta"]
    if combined > 0 and abs(delta) > 2 * combined:
        text += " ▲" if np.sign(delta) * table.direction(metric) > 0 else " ▼"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    args = parser.parse_args()
    board = table.tabulate(results.load(args.dirs))
    metrics = [m for m in args.metrics.split(",") if m in board.runs]
    for eval_id, description in board.groups.items():
        runs = board.runs[board.runs["eval"] == eval_id]
        dense = runs[runs["dense"]]
        base = dense.iloc[-1] if len(dense) else None
        print(f"### {eval_id}: {description}\n")
        print("| setting | " + " | ".join(metrics) + " |\n" + "|---" * (len(metrics) + 1) + "|")
        for _, run in runs.iterrows():
            print(f"| {run['setting']} | " + " | ".join(cell(run, m, base) for m in metrics) + " |")
        print()


if __name__ == "__main__":
    main()
