"""Server-side SVG charts for the operator console: pure functions from numbers to SVG markup.

No JavaScript and no client build: a page embeds the SVG as it is. Each point of a line chart is a
`<circle class="point">` and each bar a `<rect class="bar">`, both carrying `data-label` and `data-value`
(and a `<title>` a browser shows on hover), so a test can count them and read them back. The x axis
labels at most `MAX_X_LABELS` of the points (evenly spaced, always the first and the last); the y axis has
"nice" ticks (1, 2, 2.5 or 5 times a power of ten) from zero up past the largest value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 12, 12, 40
MAX_X_LABELS = 8
# One colour per series, in order (colour-blind-safe Okabe-Ito hues).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")


@dataclass(frozen=True)
class Series:
    """One named line (or set of bars): a value per x label, in the labels' order. None: no value there (a
    day still to come): no point and no bar, and the line stops before it."""

    name: str
    values: Sequence[float | None]


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Tick values from 0 to at least `top`, about `count` steps of 1, 2, 2.5 or 5 x 10^n."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def label_indexes(count: int, most: int = MAX_X_LABELS) -> list[int]:
    """Which of `count` x positions get a label: all when few, else `most` evenly spaced (first and last)."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def compact_number(value: float) -> str:
    """1234567 -> '1.2M', 2500 -> '2.5k', 12 -> '12', 0.5 -> '0.5' (axis ticks)."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def line_chart(labels: Sequence[str], series: Sequence[Series], *, title: str,
               value_text: Callable[[float], str] = compact_number) -> str:
    """A line chart: one polyline and one point per label for each series."""
    return _chart("line", labels, series, title, value_text)


def bar_chart(labels: Sequence[str], series: Sequence[Series], *, title: str,
              value_text: Callable[[float], str] = compact_number) -> str:
    """A grouped bar chart: one bar per label for each series, side by side."""
    return _chart("bar", labels, series, title, value_text)


def _chart(kind: str, labels: Sequence[str], series: Sequence[Series], title: str,
           value_text: Callable[[float], str]) -> str:
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(labels)} labels")
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    ticks = nice_ticks(max((v for s in series for v in s.values if v is not None), default=0.0))
    top = ticks[-1]
    slot = plot_w / max(len(labels), 1)
    points = sum(1 for s in series for v in s.values if v is not None)

    def x_of(i: int) -> float:
        return MARGIN_LEFT + slot * (i + 0.5)

    def y_of(v: float) -> float:
        return MARGIN_TOP + plot_h * (1 - v / top)

    parts = [f'<svg class="chart chart-{kind}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{escape(title)}" data-points="{points}">', f"<title>{escape(title)}</title>"]
    for t in ticks:
        y = y_of(t)
        parts.append(f'<line class="grid" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#ddd"/>')
        parts.append(f'<text class="y-label" x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{escape(value_text(t))}</text>')
    for i in label_indexes(len(labels)):
        parts.append(f'<text class="x-label" x="{x_of(i):.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" '
                     f'text-anchor="middle" font-size="11">{escape(labels[i])}</text>')
    bar_w = slot * 0.8 / max(len(series), 1)
    for n, s in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        name = escape(s.name)
        known = [(i, v) for i, v in enumerate(s.values) if v is not None]
        if kind == "line" and len(known) > 1:
            path = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in known)
            parts.append(f'<polyline class="line" fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for i, v in known:
            tip = f"<title>{name} {escape(labels[i])}: {escape(value_text(v))}</title>"
            data = f'data-series="{name}" data-label="{escape(labels[i])}" data-value="{v:g}"'
            if kind == "line":
                parts.append(f'<circle class="point" cx="{x_of(i):.1f}" cy="{y_of(v):.1f}" r="3" fill="{colour}" '
                             f"{data}>{tip}</circle>")
            else:
                x = x_of(i) - slot * 0.4 + n * bar_w
                parts.append(f'<rect class="bar" x="{x:.1f}" y="{y_of(v):.1f}" width="{bar_w:.1f}" '
                             f'height="{y_of(0) - y_of(v):.1f}" fill="{colour}" {data}>{tip}</rect>')
    for n, s in enumerate(series):
        x = MARGIN_LEFT + n * 150
        parts.append(f'<rect class="legend" x="{x}" y="{HEIGHT - 14}" width="10" height="10" '
                     f'fill="{COLOURS[n % len(COLOURS)]}"/>'
                     f'<text x="{x + 14}" y="{HEIGHT - 5}" font-size="11">{escape(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
