"""Print a results directory as a table: one row per finished run, perplexity and the offline knowledge
scores side by side, then storage and time.

    python benchmarks/results_table.py <results_dir>
"""
from __future__ import annotations

import sys

import pandas as pd

from harness import results

SCORES = {
    "metrics.pydoc/ppl": "pydoc ppl",
    "metrics.trivia/lenient": "trivia lenient",
    "metrics.trivia/exact_match": "trivia EM",
    "metrics.facts_mc_text/acc": "facts MC acc",
    "metrics.fictional_qa/closed_book/f1": "closed F1",
    "metrics.fictional_qa/open_book/f1": "open F1",
    "metrics.fictional_qa/open_book/em": "open EM",
}
COSTS = {
    "stats.bits_per_weight": "bits/w",
    "stats.sparsity": "sparsity",
    "timings.compress_s": "compress s",
    "stats.calib_peak_cuda_bytes": "calib peak MiB",
}


def setting(row: pd.Series) -> str:
    """'gptq w3g64', 'sparsegpt 2:4 w4g64', 'magnitude 50%', 'none'."""
    parts = [row["config.method.name"]]
    if row["config.sparsity_pattern"] != "unstructured":
        parts.append(row["config.sparsity_pattern"])
    elif row["config.sparsity"]:
        parts.append(f"{row['config.sparsity']:.0%}")
    if row["config.bits"] < 16:
        group = row["config.group_size"]
        parts.append(f"w{int(row['config.bits'])}" + (f"g{int(group)}" if group != -1 else ""))
    quant_type = row.get("config.method.quant_type")
    if isinstance(quant_type, str):
        parts.append(quant_type)
    return " ".join(parts)


def main(directory: str) -> None:
    df = results.load(directory)
    df = df[df.status == "ok"].copy()
    df.index = df.apply(setting, axis=1)
    df = df.sort_values("finished_at")
    if "stats.calib_peak_cuda_bytes" in df:
        df["stats.calib_peak_cuda_bytes"] = df["stats.calib_peak_cuda_bytes"] / 2**20
    for columns in (SCORES, COSTS):
        print(df[[c for c in columns if c in df]].rename(columns=columns).round(3).to_string(), "\n")
    eval_times = [c for c in df if c.startswith("timings.eval_")]
    print(df[eval_times].rename(columns=lambda c: c.removeprefix("timings.")).round(1).to_string())


if __name__ == "__main__":
    main(sys.argv[1])
