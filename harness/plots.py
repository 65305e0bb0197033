"""Scatter plots as inline SVG text: axes (linear or log), points with hover titles, an optional Pareto
front and reference lines. No plotting package: a page of them opens offline in any browser."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 460, 320
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 30, 44
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class Point:
    x: float
    y: float
    color: str
    tip: str                 # hover text
    label: str = ""          # drawn next to the point when not empty
    hollow: bool = False
    on_front: bool = False


@dataclass
class Plot:
    title: str
    x_label: str
    y_label: str
    points: list[Point]
    x_lines: list[float] = field(default_factory=list)  # vertical reference lines
    y_lines: list[float] = field(default_factory=list)  # horizontal reference lines


class Axis:
    """Maps data values to pixels; log scale when every value is positive and the largest is 20 times the
    smallest (perplexities of broken runs, perplexity ratios)."""

    def __init__(self, values: list[float], lo_px: float, hi_px: float, log: bool | None = None):
        if log is None:
            log = min(values) > 0 and max(values) / min(values) >= 20
        self.log = log
        f = math.log10 if log else float
        lo, hi = f(min(values)), f(max(values))
        pad = (hi - lo) * 0.06 or (abs(lo) * 0.1 or 1.0)
        self.lo, self.hi, self.lo_px, self.hi_px = lo - pad, hi + pad, lo_px, hi_px

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        return self.lo_px + (v - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px)

    def ticks(self) -> list[float]:
        if self.log:
            decades = range(math.ceil(self.lo), math.floor(self.hi) + 1)
            steps = (1,) if len(decades) > 2 else (1, 2, 5)
            ticks = [s * 10.0**d for d in range(math.floor(self.lo), math.floor(self.hi) + 1) for s in steps]
            return [t for t in ticks if self.lo <= math.log10(t) <= self.hi]
        raw = (self.hi - self.lo) / 5
        step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
        return [i * step for i in range(math.ceil(self.lo / step), math.floor(self.hi / step) + 1)]


def tick_text(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{value:g}"


def svg(plot: Plot) -> str:
    points = [p for p in plot.points if _finite(p.x) and _finite(p.y)]
    if not points:
        return f'<p class="empty">{escape(plot.title)}: no run has both values.</p>'
    xs = [p.x for p in points] + plot.x_lines
    ys = [p.y for p in points] + plot.y_lines
    x = Axis(xs, LEFT, WIDTH - RIGHT)
    y = Axis(ys, HEIGHT - BOTTOM, TOP)
    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">',
             f'<text x="{WIDTH / 2}" y="16" class="title">{escape(plot.title)}</text>']
    parts += _grid(x, y)
    parts += [f'<line class="ref" x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>' for v in plot.x_lines]
    parts += [f'<line class="ref" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>' for v in plot.y_lines]
    front = sorted((p for p in points if p.on_front), key=lambda p: p.x)
    if len(front) > 1:
        path = " ".join(f"{x(p.x):.1f},{y(p.y):.1f}" for p in front)
        parts.append(f'<polyline class="front" points="{path}"/>')
    for p in sorted(points, key=lambda p: p.on_front):
        fill = "none" if p.hollow else p.color
        ring = ' class="on-front"' if p.on_front else ""
        parts.append(f'<circle{ring} cx="{x(p.x):.1f}" cy="{y(p.y):.1f}" r="4.5" fill="{fill}" stroke="{p.color}">'
                     f"<title>{escape(p.tip)}</title></circle>")
        if p.label:  # right of the point, or left of it in the plot's right third
            left = x(p.x) > LEFT + (WIDTH - LEFT - RIGHT) * 2 / 3
            parts.append(f'<text class="label{" end" if left else ""}" x="{x(p.x) + (-6 if left else 6):.1f}" '
                         f'y="{y(p.y) - 5:.1f}">{escape(p.label)}</text>')
    parts.append(f'<text class="axis-label" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}">{escape(plot.x_label)}{" (log)" if x.log else ""}</text>')
    parts.append(f'<text class="axis-label" transform="translate(14 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)">'
                 f'{escape(plot.y_label)}{" (log)" if y.log else ""}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _grid(x: Axis, y: Axis) -> list[str]:
    parts = [f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}"/>']
    for t in x.ticks():
        parts.append(f'<line class="grid" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>'
                     f'<text class="tick" x="{x(t):.1f}" y="{HEIGHT - BOTTOM + 14}">{tick_text(t)}</text>')
    for t in y.ticks():
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}"/>'
                     f'<text class="tick y" x="{LEFT - 4}" y="{y(t) + 4:.1f}">{tick_text(t)}</text>')
    return parts


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def colors(names) -> dict[str, str]:
    """A stable color per name (methods), in sorted order."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}
