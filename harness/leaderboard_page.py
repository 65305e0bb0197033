"""The leaderboard as one self-contained HTML file: the sortable, filterable table, per model and
evaluation setting the Pareto plots and the LLM-KICK view, and the failed runs. Inline SVG and a few
lines of vanilla JavaScript: nothing to fetch, it opens from the file system."""
from __future__ import annotations

from html import escape

import pandas as pd

from harness import plots, table
from harness.table import Board, missing

FILTERS = ("model", "method", "bits", "sparsity", "pattern", "eval")
VERDICT_MARK = {"better": "better", "worse": "worse", "within stderr": "≈ within stderr", "same": "same"}
KICK_COLORS = {"worse": "#d62728", "better": "#2ca02c", "within stderr": "#7f7f7f", "same": "#7f7f7f"}
MAX_LABELS = 16  # every point is labeled with its setting when a plot has at most this many (else the front only)

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}
.controls{margin:8px 0;display:flex;flex-wrap:wrap;gap:8px;align-items:center}
.scroll{overflow:auto;max-width:100%;max-height:65vh}.evals{margin:4px 0;font-size:12.5px}
table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
td.t,th.t{text-align:left}
th{background:#f3f3f3;position:sticky;top:0;cursor:pointer;user-select:none}
th[data-order=asc]::after{content:" \\25B2"}th[data-order=desc]::after{content:" \\25BC"}
tr.dense td{background:#f7f7ff}
.better{color:#1a7f37}.worse{color:#c62828}.within{color:#888}
td small{display:block;font-size:11px}
.plots{display:flex;flex-wrap:wrap;gap:10px}
svg.plot{border:1px solid #eee;background:#fff}
svg .title{font-size:13px;text-anchor:middle;font-weight:600}
svg .tick{font-size:10px;text-anchor:middle;fill:#555}svg .tick.y{text-anchor:end}
svg .axis-label{font-size:11.5px;text-anchor:middle}
svg .label{font-size:9.5px;fill:#333}svg .label.end{text-anchor:end}
svg .frame{fill:none;stroke:#bbb}svg .grid{stroke:#eee}svg .ref{stroke:#999;stroke-dasharray:4 3}
svg .front{fill:none;stroke:#000;stroke-width:1.2}svg circle.on-front{stroke:#000;stroke-width:1.5}
svg circle{fill-opacity:.8}
.legend span{margin-right:12px}.legend i{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px}
pre{white-space:pre-wrap;max-width:900px;margin:0}
"""

SCRIPT = """
function cellKey(row, i) {
  const c = row.cells[i];
  if (c.dataset.v === undefined) return c.textContent.trim();
  return c.dataset.v === '' ? null : parseFloat(c.dataset.v);
}
function sortTable(th) {
  const tbl = th.closest('table'), body = tbl.tBodies[0], i = th.cellIndex;
  const asc = th.dataset.order !== 'asc';
  tbl.querySelectorAll('th').forEach(h => delete h.dataset.order);
  th.dataset.order = asc ? 'asc' : 'desc';
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellKey(a, i), y = cellKey(b, i);
    if (x === null || y === null) return (x === null) - (y === null);
    const d = typeof x === 'number' ? x - y : String(x).localeCompare(String(y));
    return asc ? d : -d;
  });
  rows.forEach(r => body.appendChild(r));
}
function applyFilters() {
  const chosen = Array.from(document.querySelectorAll('select.filter')).map(s => [s.dataset.col, s.value]);
  const text = document.getElementById('search').value.toLowerCase();
  let shown = 0;
  for (const r of document.querySelectorAll('#board tbody tr')) {
    const keep = chosen.every(([c, v]) => v === '' || r.dataset[c] === v) && (!text || r.textContent.toLowerCase().includes(text));
    r.hidden = !keep;
    shown += keep;
  }
  document.getElementById('shown').textContent = shown;
}
document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => sortTable(th)));
document.querySelectorAll('select.filter').forEach(s => s.addEventListener('change', applyFilters));
document.getElementById('search').addEventListener('input', applyFilters);
"""


def render(board: Board, sources: list[str], generated: str) -> str:
    runs = board.runs
    records = runs.to_dict("records")  # once: pandas row access is slow
    body = [
        "<h1>Compression leaderboard</h1>",
        f"<p>{len(runs)} finished runs, {len(board.failed)} failed or interrupted, {runs['model'].nunique()} model(s), "
        f"from {escape(', '.join(sources))}; built {escape(generated)}.</p>",
        _notes(),
        "<h2>Runs</h2>",
        _controls(runs),
        "<ul class=\"evals\">" + "".join(f"<li><b>{gid}</b>: {escape(text)}</li>" for gid, text in board.groups.items()) + "</ul>",
        f'<div class="scroll">{_runs_table(board, records)}</div>',
    ]
    colors = plots.colors(runs["method"].dropna())
    for gid in board.groups:
        body.append(_group_section(board, gid, [run for run in records if run["eval"] == gid], colors))
    body.append(_failed_section(board.failed))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Compression leaderboard</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def _notes() -> str:
    key = ", ".join(k.removeprefix("config.") + ("*" if k.endswith(".") else "") for k in table.EVAL_KEY)
    return (
        "<details><summary>How to read this</summary><ul>"
        "<li>Each run is compared with the dense baseline (method none, 16 bits, sparsity 0) of the same "
        f"evaluation key: {escape(key)}. The latest such dense run is the baseline; a run without one says so.</li>"
        "<li>Under each score: its relative change against the baseline, green when better, red when worse, "
        "grey <b>≈</b> when the change is within the combined standard error sqrt(se<sub>run</sub>² + se<sub>base</sub>²) "
        "(scores that carry a <code>_stderr</code>); those are not wins. Perplexity is lower-better, every other score higher-better.</li>"
        "<li>Pareto plots: the black line joins the runs no other run beats on both axes (fewer bits per weight or "
        "faster decoding, and a better score); the dense baseline is among the points.</li>"
        "<li>LLM-KICK view: perplexity ratio against relative change of each knowledge score. A point far down on the "
        "left kept its perplexity but lost knowledge.</li></ul></details>"
    )


def _controls(runs: pd.DataFrame) -> str:
    selects = []
    for column in FILTERS:
        values = sorted({_text(v) for v in runs[column]}, key=_natural)
        options = "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)
        selects.append(f'<label>{column} <select class="filter" data-col="{column}"><option value="">all</option>{options}</select></label>')
    return (f'<div class="controls">{"".join(selects)}<input id="search" type="search" placeholder="filter text">'
            f'<span><b id="shown">{len(runs)}</b> shown</span></div>')


def _runs_table(board: Board, records: list[dict]) -> str:
    runs = board.runs
    costs = [name for name in table.COSTS.values() if runs[name].notna().any()]
    head = ['<th class="t">model</th><th class="t">setting</th><th class="t">method</th><th>bits</th><th>group</th>'
            '<th>sparsity</th><th class="t">pattern</th><th class="t">eval</th>']
    for metric in board.metrics:
        better = "lower" if table.is_perplexity(metric) else "higher"
        head.append(f'<th title="{better} is better">{escape(metric)}</th>'
                    f'<th title="relative change against the dense baseline">{escape(metric)} Δ</th>')
    head += [f"<th>{escape(c)}</th>" for c in costs] + ['<th class="t">baseline</th><th class="t">run</th>']
    rows = []
    for run in records:
        data = " ".join(f'data-{c}="{escape(_text(run[c]))}"' for c in FILTERS)
        cells = [_td(run["model"]), _td(run["setting"]), _td(run["method"]), _num(run["bits"]), _num(run["group"]),
                 _num(run["sparsity"]), _td(run["pattern"]), _td(run["eval"], title=board.groups[run["eval"]])]
        for metric in board.metrics:
            cells += [_num(run[metric], title=_stderr_text(run, metric)), _delta(run, metric)]
        cells += [_num(run[c]) for c in costs]
        baseline = "dense" if run["dense"] else ("none" if run["baseline"] == table.NO_BASELINE else run["baseline"])
        cells += [_td(baseline, title=run["baseline"]), _td(run["run_id"])]
        rows.append(f'<tr class="{"dense" if run["dense"] else ""}" data-run="{run["run_id"]}" {data}>{"".join(cells)}</tr>')
    return (f'<table id="board" class="sortable"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>\n{chr(10).join(rows)}\n</tbody></table>')


def _delta(run: dict, metric: str) -> str:
    rel, verdict = run[f"{metric} rel"], run[f"{metric} vs dense"]
    if run["dense"] or not verdict:
        return '<td data-v=""></td>'
    css = {"better": "better", "worse": "worse", "within stderr": "within"}.get(verdict, "")
    shown = f"{rel:+.1%}" if not missing(rel) else f"{run[f'{metric} delta']:+.4g}"
    mark = "≈ " if verdict == "within stderr" else ""
    title = f"{VERDICT_MARK[verdict]}; change {run[f'{metric} delta']:+.4g}"
    value = rel if not missing(rel) else run[f"{metric} delta"]
    return f'<td class="{css}" data-v="{value:.6g}" title="{escape(title)}">{mark}{shown}</td>'


def _stderr_text(run: dict, metric: str) -> str:
    se = run[f"{metric} stderr"]
    return "" if missing(se) else f"standard error {se:.3g}"


def _td(value, title: str = "") -> str:
    t = f' title="{escape(title)}"' if title else ""
    return f'<td class="t"{t}>{escape(_text(value))}</td>'


def _num(value, title: str = "") -> str:
    t = f' title="{escape(title)}"' if title else ""
    if missing(value):
        return f'<td data-v=""{t}></td>'
    return f'<td data-v="{float(value):.8g}"{t}>{escape(table.fmt(value))}</td>'


def _group_section(board: Board, gid: str, runs: list[dict], colors: dict[str, str]) -> str:
    metrics = [m for m in table.headline(board.metrics) if _any(runs, m)]
    legend = "".join(f'<span><i style="background:{c}"></i>{escape(m)}</span>' for m, c in colors.items() if m in {r["method"] for r in runs})
    parts = [f"<h2>{gid}: {escape(board.groups[gid])}</h2>", f'<p class="legend">{legend} (black ring and line: Pareto front)</p>', '<div class="plots">']
    for axis, name, direction in ((table.COSTS[table.BITS_PER_WEIGHT], "effective bits per weight", -1),
                                  (table.COSTS[table.DECODE_SPEED], "decode tokens/s (batch 1)", 1)):
        if _any(runs, axis):
            parts += [plots.svg(_pareto_plot(runs, metric, axis, name, direction, colors)) for metric in metrics]
    parts.append("</div>")
    kick = _kick_plots(runs, metrics)
    if kick:
        parts += ["<h3>LLM-KICK view: perplexity kept, knowledge lost?</h3>", '<div class="plots">', *kick, "</div>"]
    return "\n".join(parts)


def _pareto_plot(runs: list[dict], metric: str, axis: str, axis_name: str, direction: int, colors) -> plots.Plot:
    front = table.pareto_front([_float(r[axis]) for r in runs], [_float(r[metric]) for r in runs], direction, table.direction(metric))
    label_all = len(runs) <= MAX_LABELS
    points = [plots.Point(x=_float(run[axis]), y=_float(run[metric]), color=colors.get(run["method"], "#000"),
                          tip=f"{run['setting']}: {metric} {table.fmt(run[metric])}, {axis_name} {table.fmt(run[axis])}",
                          label=run["setting"] if (on or label_all) else "", on_front=bool(on))
              for run, on in zip(runs, front)]
    better = "lower" if table.is_perplexity(metric) else "higher"
    return plots.Plot(title=f"{metric} vs {axis_name}", x_label=axis_name, y_label=f"{metric} ({better} is better)", points=points)


def _kick_plots(runs: list[dict], metrics: list[str]) -> list[str]:
    """Per knowledge score, each compressed run's perplexity ratio (x) and relative score change (y)."""
    perplexities = [m for m in metrics if table.is_perplexity(m)]
    knowledge = [m for m in metrics if not table.is_perplexity(m)]
    compared = [r for r in runs if not r["dense"] and r["baseline"] != table.NO_BASELINE]
    if not perplexities or not knowledge or not compared:
        return []
    ppl = perplexities[0]
    out = []
    for metric in knowledge:
        if not _any(compared, f"{metric} rel"):
            out.append(f'<p class="empty">{escape(metric)}: the dense baseline scores 0, so no relative change.</p>')
            continue
        points = []
        for run in compared:
            ratio, rel, verdict = 1 + _float(run[f"{ppl} rel"]), 100 * _float(run[f"{metric} rel"]), run[f"{metric} vs dense"]
            points.append(plots.Point(
                x=ratio, y=rel, color=KICK_COLORS.get(verdict, "#000"), hollow=verdict == "within stderr",
                tip=f"{run['setting']}: {ppl} x{ratio:.3g}, {metric} {rel:+.1f}% ({VERDICT_MARK.get(verdict, verdict)})",
                label=run["setting"] if len(compared) <= MAX_LABELS else ""))
        out.append(plots.svg(plots.Plot(
            title=f"{metric} vs {ppl}", x_label=f"{ppl} / dense {ppl}", y_label=f"{metric} change vs dense (%)",
            points=points, x_lines=[1.0], y_lines=[0.0])))
    return out


def _failed_section(failed: pd.DataFrame) -> str:
    if failed.empty:
        return "<h2>Failed runs</h2><p>None.</p>"
    rows = "".join(f"<tr>{_td(r.run_id)}{_td(r.model)}{_td(r.setting)}{_td(r.status)}<td class=\"t\"><pre>{escape(_text(r.error))}</pre></td>"
                   f"{_td(r.finished_at)}</tr>" for r in failed.itertuples())
    return (f"<h2>Failed runs ({len(failed)})</h2><table id=\"failed\" class=\"sortable\"><thead><tr><th class=\"t\">run</th>"
            "<th class=\"t\">model</th><th class=\"t\">setting</th><th class=\"t\">status</th><th class=\"t\">error</th>"
            f"<th class=\"t\">finished</th></tr></thead><tbody>{rows}</tbody></table>")


def _any(runs: list[dict], column: str) -> bool:
    return any(not missing(r[column]) for r in runs)


def _float(value) -> float:
    return float("nan") if missing(value) else float(value)


def _text(value) -> str:
    if missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _natural(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
