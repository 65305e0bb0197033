"""Tabulate run records: one row per run with every metric, its change against the dense baseline of
the same model and evaluation settings, and whether that change exceeds the metric's standard error.

The one way records become a table: `python -m harness.leaderboard` renders it as a page, CSV and
Markdown; `benchmarks/results_table.py` prints it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Columns that say what a run is, with their short names.
IDENTITY = {
    "config.model.name": "model",
    "config.method.name": "method",
    "config.bits": "bits",
    "config.group_size": "group",
    "config.sparsity": "sparsity",
    "config.sparsity_pattern": "pattern",
}
COSTS = {
    "stats.bits_per_weight": "bits/w",
    "stats.sparsity": "achieved sparsity",
    "stats.compressed_bytes": "size MiB",
    "timings.compress_s": "compress s",
    "stats.calib_peak_cuda_bytes": "calib peak MiB",
    "latency.decode_tokens_per_s.1": "decode tok/s (batch 1)",
}
IN_MIB = {"stats.compressed_bytes", "stats.calib_peak_cuda_bytes"}  # recorded in bytes
BITS_PER_WEIGHT = "stats.bits_per_weight"
DECODE_SPEED = "latency.decode_tokens_per_s.1"

# A run is compared with a dense run that agrees on all of these (a name ending in "." stands for every
# column under it): the same model, the same tasks with the same resolved task settings (config.task_specs
# holds each task's caps, seeds, batch sizes and windows after the top-level overrides), the same numeric
# setup. Compression settings, calibration and the run's own seed are what may differ.
EVAL_KEY = (
    "config.model.",
    "config.tasks",
    "config.task_specs.",
    "config.seqlen",
    "config.max_eval_tokens",
    "config.max_samples",
    "config.eval_batch_size",
    "config.judge.",
    "config.lm_eval_include_path",
    "config.dtype",
    "config.device",
)

# Metric names (the part after "task/") that are scores where lower is better; every other score is
# higher-better. Counts and diagnostics are no scores at all.
LOWER_BETTER = {"ppl", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"}
NOT_SCORES = {"n", "rated_fraction"}
STDERR = "_stderr"

NO_BASELINE = "no dense run (method none, 16 bits, sparsity 0) with this model and these evaluation settings"


def direction(metric: str) -> int:
    """+1 if a higher value is better, -1 if lower is better, 0 if the metric is no score."""
    last = metric.rsplit("/", 1)[-1]
    if last.endswith(STDERR) or last in NOT_SCORES:
        return 0
    return -1 if last in LOWER_BETTER else 1


def is_perplexity(metric: str) -> bool:
    return direction(metric) < 0


def scores(df: pd.DataFrame) -> list[str]:
    """The score metrics in the frame (names without the "metrics." prefix), perplexities first."""
    names = [c.removeprefix("metrics.") for c in df if c.startswith("metrics.") and df[c].notna().any()]
    names = [m for m in names if direction(m)]
    return sorted(names, key=lambda m: (not is_perplexity(m), m))


def headline(metrics: list[str]) -> list[str]:
    """The metrics that are not a breakdown of another one ("facts_mc/acc/capital" breaks down "facts_mc/acc")."""
    return [m for m in metrics if not any(m.startswith(other + "/") for other in metrics)]


def setting(row: dict) -> str:
    """'gptq w3g64', 'sparsegpt 2:4 w4g64', 'magnitude 50%', 'none'."""
    parts = [row["config.method.name"]]
    pattern = row.get("config.sparsity_pattern")
    if isinstance(pattern, str) and pattern != "unstructured":
        parts.append(pattern)
    elif _number(row.get("config.sparsity")):
        parts.append(f"{row['config.sparsity']:.0%}")
    if _number(row.get("config.bits"), 16) < 16:
        group = row.get("config.group_size")
        parts.append(f"w{int(row['config.bits'])}" + (f"g{int(group)}" if _number(group, -1) != -1 else ""))
    quant_type = row.get("config.method.quant_type")
    if isinstance(quant_type, str):
        parts.append(quant_type)
    return " ".join(parts)


def _number(value, default: float = 0.0) -> float:
    return default if missing(value) else float(value)


def eval_columns(df: pd.DataFrame) -> list[str]:
    return sorted(c for c in df if any(c == k or (k.endswith(".") and c.startswith(k)) for k in EVAL_KEY))


def eval_keys(df: pd.DataFrame) -> pd.Series:
    """Per run, the text of its evaluation settings (EVAL_KEY); runs with the same text are comparable."""
    columns = eval_columns(df)
    keys = [";".join(f"{c.removeprefix('config.')}={_canonical(row[c])}" for c in columns if not missing(row[c]))
            for row in df[columns].to_dict("records")]
    return pd.Series(keys, index=df.index, dtype=object)


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _canonical(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(sorted(map(str, value))) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_dense(df: pd.DataFrame) -> pd.Series:
    bits = df.get("config.bits", pd.Series(16, index=df.index)).fillna(16)
    sparsity = df.get("config.sparsity", pd.Series(0.0, index=df.index)).fillna(0.0)
    return (df["config.method.name"] == "none") & (bits >= 16) & (sparsity == 0)


@dataclass
class Board:
    runs: pd.DataFrame      # ok runs: identity, costs, baseline, and per score: value, stderr, delta, rel, verdict
    failed: pd.DataFrame    # every run whose status is not ok, with its error
    metrics: list[str]      # score metrics, perplexities first
    groups: dict[str, str]  # evaluation setting id ("E1") -> its description (model, tasks, caps)


def tabulate(df: pd.DataFrame) -> Board:
    """The leaderboard of a `results.load` frame."""
    df = df.reset_index(drop=True)
    status = df["status"] if "status" in df else pd.Series("ok", index=df.index)
    failed = df[status != "ok"]
    ok = df[status == "ok"].copy()
    metrics = scores(ok)
    ok["eval_key"] = eval_keys(ok)
    ids = {key: f"E{i + 1}" for i, key in enumerate(sorted(ok.eval_key.unique()))}
    groups = {ids[key]: _describe(ok[ok.eval_key == key].iloc[0].to_dict()) for key in ids}
    runs = _identity(ok)
    runs["eval"] = ok.eval_key.map(ids)
    runs["dense"] = is_dense(ok).to_numpy()
    baseline = _baselines(ok)
    runs["baseline"] = baseline.fillna(NO_BASELINE)
    base_rows = ok.drop_duplicates("run_id", keep="last").set_index("run_id").reindex(baseline.dropna())
    base_rows.index = baseline.dropna().index
    compared = [_compare(ok, base_rows, metric) for metric in metrics]
    runs = pd.concat([runs, *compared], axis=1)  # one concat: a column at a time fragments the frame
    order = runs.sort_values(["model", "eval", "dense", "bits/w"], ascending=[True, True, False, False]).index
    return Board(runs=runs.loc[order].reset_index(drop=True), failed=_failed(failed), metrics=metrics, groups=groups)


def _identity(ok: pd.DataFrame) -> pd.DataFrame:
    runs = pd.DataFrame({"run_id": ok["run_id"]})
    for column, name in IDENTITY.items():
        runs[name] = ok[column] if column in ok else None
    runs["setting"] = [setting(row) for row in ok.to_dict("records")]
    for column, name in COSTS.items():
        runs[name] = pd.to_numeric(ok[column], errors="coerce") / (2**20 if column in IN_MIB else 1) if column in ok else np.nan
    runs["finished_at"] = ok.get("finished_at")
    return runs


def _baselines(ok: pd.DataFrame) -> pd.Series:
    """Per run, the run id of its dense baseline (the latest finished one of its evaluation key), or NaN."""
    dense = ok[is_dense(ok)].sort_values("finished_at", na_position="first")
    latest = dense.groupby("eval_key")["run_id"].last()
    return ok["eval_key"].map(latest)


def _compare(ok: pd.DataFrame, base: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Columns for `metric`: its value, its stderr, its change against the baseline (absolute, relative) and the verdict:
    better / worse / within stderr (|change| <= the combined standard error sqrt(se_run^2 + se_base^2)) /
    same. The combined error treats the two runs as independent samples; both runs score the same
    questions, so the paired error is smaller and the rule leans towards "within stderr"."""
    column, err = f"metrics.{metric}", f"metrics.{metric}{STDERR}"
    value = pd.to_numeric(ok[column], errors="coerce")
    se = pd.to_numeric(ok[err], errors="coerce") if err in ok else pd.Series(np.nan, index=ok.index)
    base_value = pd.to_numeric(base.get(column), errors="coerce").reindex(ok.index)
    base_se = pd.to_numeric(base[err], errors="coerce").reindex(ok.index) if err in base else pd.Series(np.nan, index=ok.index)
    delta = value - base_value
    combined = np.sqrt(se.fillna(0) ** 2 + base_se.fillna(0) ** 2)
    sign = np.sign(delta) * direction(metric)
    verdict = np.where(sign > 0, "better", np.where(sign < 0, "worse", "same"))
    verdict = np.where((combined > 0) & (delta.abs() <= combined), "within stderr", verdict)
    verdict = np.where(delta.isna(), "", verdict)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(base_value != 0, delta / base_value, np.nan)
    columns = {metric: value, f"{metric} stderr": se, f"{metric} delta": delta, f"{metric} rel": rel, f"{metric} vs dense": verdict}
    return pd.DataFrame({name: np.asarray(column) for name, column in columns.items()}, index=ok.index)


def _failed(failed: pd.DataFrame) -> pd.DataFrame:
    columns = {"run_id": "run_id", "config.model.name": "model", "status": "status", "error": "error", "finished_at": "finished_at"}
    table = pd.DataFrame({name: failed[c] if c in failed else None for c, name in columns.items()})
    table.insert(2, "setting", [setting(row) for row in failed.to_dict("records")])
    return table.reset_index(drop=True)


def _describe(row: dict) -> str:
    """A short label of an evaluation key: model, tasks and the top-level caps."""
    tasks = row.get("config.tasks")
    parts = [str(row.get("config.model.name")), ",".join(tasks) if isinstance(tasks, (list, tuple)) else str(tasks)]
    for key in ("seqlen", "max_eval_tokens", "max_samples", "dtype", "device"):
        value = row.get(f"config.{key}")
        if not missing(value):
            parts.append(f"{key}={_canonical(value)}")
    return " ".join(parts)


def pareto_front(x, y, x_direction: int, y_direction: int) -> np.ndarray:
    """Mask of the points no other point dominates (at least as good on both axes, better on one).
    Points with a missing coordinate are never on the front."""
    a = np.asarray(x, dtype=float) * x_direction
    b = np.asarray(y, dtype=float) * y_direction
    front = np.zeros(len(a), dtype=bool)
    valid = np.flatnonzero(~(np.isnan(a) | np.isnan(b)))
    best = -np.inf  # best b among points with a strictly larger a
    by_a = valid[np.lexsort((-b[valid], -a[valid]))]
    start = 0
    while start < len(by_a):
        stop = start
        while stop < len(by_a) and a[by_a[stop]] == a[by_a[start]]:
            stop += 1
        tie = by_a[start:stop]
        top = b[tie].max()
        if top > best:
            front[tie[b[tie] == top]] = True
        best = max(best, top)
        start = stop
    return front


def markdown(board: Board) -> str:
    """Identity, costs, and each headline score with its relative change and verdict against the baseline."""
    lines = []
    for gid, description in board.groups.items():
        runs = board.runs[board.runs["eval"] == gid]
        metrics = [m for m in headline(board.metrics) if runs[m].notna().any()]
        costs = [c for c in COSTS.values() if runs[c].notna().any()]
        head = ["setting", *metrics, *costs]
        lines += [f"### {gid}: {description}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for run in runs.to_dict("records"):
            cells = [run["setting"] + (" (dense)" if run["dense"] else "")]
            cells += [_cell(run, m) for m in metrics] + [fmt(run[c]) for c in costs]
            lines.append("| " + " | ".join(cells) + " |")
        missing = runs[runs["baseline"] == NO_BASELINE]
        if len(missing):
            lines += ["", f"{len(missing)} run(s) have {NO_BASELINE}: {', '.join(missing.setting)}."]
        lines.append("")
    lines += ["Change against the dense baseline in parentheses; `~` marks a change within the combined standard error.", ""]
    if len(board.failed):
        lines += ["### Failed runs", "", "| run | model | setting | status | error |", "|---|---|---|---|---|"]
        for run in board.failed.to_dict("records"):
            error = str(run["error"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {run['run_id']} | {run['model']} | {run['setting']} | {run['status']} | {error} |")
        lines.append("")
    return "\n".join(lines)


def _cell(run: dict, metric: str) -> str:
    value = run[metric]
    if missing(value):
        return ""
    text = fmt(value)
    rel = run[f"{metric} rel"]
    if not missing(rel) and not run["dense"]:
        text += f" ({'~' if run[f'{metric} vs dense'] == 'within stderr' else ''}{rel:+.1%})"
    return text


def fmt(value) -> str:
    if missing(value):
        return ""
    value = float(value)
    if value.is_integer() and abs(value) < 1e6:
        return f"{value:.0f}"
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3g}"
    decimals = 3 if abs(value) < 1 else 2 if abs(value) < 100 else 1 if abs(value) < 1000 else 0
    return f"{value:,.{decimals}f}"
