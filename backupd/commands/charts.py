"""Small line charts as inline SVG, drawn on the server: no script, no external asset.

Every point is one ``<circle class="point">`` with a ``<title>`` (a browser shows it on
hover), so a chart of N runs has exactly N points. Every text is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 24, 28
GRID_LINES = 4


@dataclass(frozen=True)
class Point:
    x: float  # position along the axis: a run's index, or a time in seconds
    y: float
    label: str  # shown on hover: what the point is
    failed: bool = False


def line_chart(chart_id: str, title: str, points: Sequence[Point],
               format_y: Callable[[float], str], x_caption: str) -> str:
    """An SVG line chart of ``points`` (in order), y from 0 to the largest value."""
    head = (f'<svg id="{escape(chart_id)}" class="chart" role="img" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
            f'<text x="{LEFT}" y="16" class="chart-title">{escape(title)}</text>')
    if not points:
        return (head + f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
                'class="empty">no runs recorded yet</text></svg>')
    top = max(p.y for p in points) or 1.0
    xs = [p.x for p in points]
    low, high = min(xs), max(xs)
    span = (high - low) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(point: Point) -> tuple[float, float]:
        x = LEFT + (plot_w / 2 if high == low else (point.x - low) / span * plot_w)
        return round(x, 1), round(TOP + plot_h - point.y / top * plot_h, 1)

    parts = [head]
    for step in range(GRID_LINES + 1):
        value = top * step / GRID_LINES
        y = round(TOP + plot_h - plot_h * step / GRID_LINES, 1)
        parts.append(f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" class="grid"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end" class="axis">'
                     f'{escape(format_y(value))}</text>')
    coords = [at(p) for p in points]
    parts.append('<polyline class="line" points="'
                 + " ".join(f"{x},{y}" for x, y in coords) + '"/>')
    for (x, y), point in zip(coords, points, strict=True):
        kind = "point failed" if point.failed else "point"
        parts.append(f'<circle class="{kind}" cx="{x}" cy="{y}" r="3.5">'
                     f'<title>{escape(point.label)}</title></circle>')
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end" '
                 f'class="axis">{escape(x_caption)}</text></svg>')
    return "".join(parts)
