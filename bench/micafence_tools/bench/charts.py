"""Small inline SVG charts for the benchmark's HTML report: drawn here, no script, no network.

Two kinds, both horizontal and grouped (a group is a traffic class, an HTTP scenario or a page;
its rows are the apps measured on it):

- :func:`bar_chart`: one bar per row, its value written at its end;
- :func:`range_chart`: one row per app, a line from its lowest to its highest percentile with a
  dot at each, the percentiles written at the right.

Every bar and dot carries ``data-group``, ``data-series`` and ``data-value`` (and a ``<title>``
a browser shows on hover), so a reader, or a test, can tell exactly which figure it draws. A
figure that is no number (NaN, infinite) is not drawn; one outside the axis (below zero, say)
is drawn at its end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

#: The apps' colours, the same in every chart.
COLOURS = {"bare": "#7a7a7a", "floor": "#b9b9b9", "micafence": "#1f6fb2", "naive": "#d9822b",
           "engine": "#4e9a3f", "middleware": "#8a5cb0"}
_MORE_COLOURS = ("#2a9d8f", "#c2514b", "#264653", "#b8962e", "#6c757d")
_WIDTH = 900
_LABELS = 170  # left column: group labels
_BAR_FIGURES = 70  # right of the plot: room for the longest bar's figure
_RANGE_FIGURES = 320  # right of the plot: every percentile of a row, written out
_ROW = 15
_GROUP_GAP = 10
_TOP = 46  # legend and axis labels
_BOTTOM = 8

#: ``(group label, {series: value})``: a chart's data, groups and series in drawing order.
Groups = Sequence[tuple[str, Mapping[str, float]]]
#: ``(group label, {series: {percentile name: value}})`` for :func:`range_chart`.
Ranges = Sequence[tuple[str, Mapping[str, Mapping[str, float]]]]


def figure(value: float) -> str:
    """A figure as the report writes it: three significant digits or whole units."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _tick(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else figure(value)


def colour(series: str, order: Sequence[str]) -> str:
    return COLOURS.get(series) or _MORE_COLOURS[order.index(series) % len(_MORE_COLOURS)]


@dataclass(frozen=True, slots=True)
class _Scale:
    """Value to x in the plot, from 0 (linear) or from the decade below the least (log)."""

    low: float
    high: float
    log: bool
    width: float

    @classmethod
    def over(cls, values: Sequence[float], log: bool | None, width: float) -> _Scale:
        top = max(values, default=1.0)
        top = top if top > 0 else 1.0
        if log is None:  # figures over more than two decades: a linear axis would hide most
            least = min((v for v in values if v > 0), default=top)
            log = top / least > 100
        if log:
            positive = [v for v in values if v > 0] or [1.0]
            return cls(10 ** math.floor(math.log10(min(positive))),
                       10 ** math.ceil(math.log10(top)), True, width)
        step = _step(top)
        return cls(0.0, math.ceil(top * 1.02 / step) * step, False, width)

    def x(self, value: float) -> float:
        if self.log:
            value = max(value, self.low)
            span = math.log10(self.high) - math.log10(self.low)
            return (math.log10(value) - math.log10(self.low)) / span * self.width
        return max(0.0, (value - self.low) / (self.high - self.low) * self.width)

    def ticks(self) -> list[float]:
        if self.log:
            decades = round(math.log10(self.high / self.low))
            return [self.low * 10**n for n in range(decades + 1)]
        step = _step(self.high)
        return [n * step for n in range(int(self.high / step + 1e-9) + 1)]


def _step(top: float) -> float:
    """A round tick step giving at most five steps up to ``top``."""
    magnitude = 10 ** math.floor(math.log10(top / 5)) if top > 0 else 1.0
    return next(magnitude * m for m in (1, 2, 5, 10) if top / (magnitude * m) <= 5)


def _frame(caption: str, groups: Sequence[tuple[str, Sequence[str]]], series: Sequence[str],
           scale: _Scale, unit: str) -> tuple[list[str], list[tuple[str, str, float]]]:
    """The chart's frame (title, legend, grid, group labels) and each row's (group, series, y)."""
    rows: list[tuple[str, str, float]] = []
    y = float(_TOP)
    for group, members in groups:
        for series_name in members:
            rows.append((group, series_name, y))
            y += _ROW
        y += _GROUP_GAP
    height = y - _GROUP_GAP + _BOTTOM + 16
    parts = [f'<svg class="chart" role="img" '
             f'width="{_WIDTH}" height="{height:.0f}" viewBox="0 0 {_WIDTH} {height:.0f}" '
             f'aria-label="{escape(caption)}">', f"<title>{escape(caption)}</title>"]
    x = float(_LABELS)
    for name in series:
        parts.append(f'<rect x="{x:.0f}" y="6" width="10" height="10" '
                     f'fill="{colour(name, series)}"/>'
                     f'<text x="{x + 14:.0f}" y="15" class="legend">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    bottom = height - 16
    for tick in scale.ticks():
        tx = _LABELS + scale.x(tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{_TOP - 6}" x2="{tx:.1f}" y2="{bottom:.0f}" '
                     f'class="grid"/><text x="{tx:.1f}" y="{_TOP - 10}" class="tick" '
                     f'text-anchor="middle">{_tick(tick)}</text>')
    parts.append(f'<text x="{_WIDTH - 4}" y="15" class="tick" text-anchor="end">'
                 f'{escape(unit)}{", log scale" if scale.log else ""}</text>')
    first: dict[str, float] = {}
    for group, _series, row_y in rows:
        first.setdefault(group, row_y)
    for group, row_y in first.items():
        parts.append(f'<text x="{_LABELS - 8}" y="{row_y + 11:.0f}" class="group" '
                     f'text-anchor="end">{escape(group)}</text>')
    return parts, rows


def bar_chart(caption: str, groups: Groups, unit: str, *, log: bool | None = None) -> str:
    """Grouped horizontal bars: one per series present in each group. The axis is logarithmic
    when ``log``, or (``None``) when the figures span more than two decades."""
    groups = [(group, {name: v for name, v in values.items() if math.isfinite(v)})
              for group, values in groups]
    series = _series_order(values.keys() for _, values in groups)
    scale = _Scale.over([v for _, values in groups for v in values.values()], log,
                        _WIDTH - _LABELS - _BAR_FIGURES)
    members = [(group, [s for s in series if s in values]) for group, values in groups]
    parts, rows = _frame(caption, members, series, scale, unit)
    by_group = dict(groups)
    for group, series_name, y in rows:
        value = by_group[group][series_name]
        width = max(scale.x(value), 1.0)
        parts.append(
            f'<rect class="bar" x="{_LABELS}" y="{y + 1:.0f}" width="{width:.1f}" '
            f'height="{_ROW - 3}" fill="{colour(series_name, series)}"'
            f"{_data(group, series_name, value)}>"
            f"<title>{escape(group)}, {escape(series_name)}: {figure(value)} {escape(unit)}"
            f'</title></rect><text x="{_LABELS + width + 4:.1f}" y="{y + 11:.0f}" '
            f'class="figure">{figure(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def range_chart(caption: str, groups: Ranges, unit: str, *, log: bool | None = None) -> str:
    """Latency distributions: per group, one row per series, a dot at each percentile."""
    groups = [(group, {name: finite for name, marks in by_series.items()
                       if (finite := {p: v for p, v in marks.items() if math.isfinite(v)})})
              for group, by_series in groups]
    series = _series_order(by_series.keys() for _, by_series in groups)
    everything = [v for _, by_series in groups for marks in by_series.values()
                  for v in marks.values()]
    scale = _Scale.over(everything, log, _WIDTH - _LABELS - _RANGE_FIGURES)
    members = [(group, [s for s in series if s in by_series]) for group, by_series in groups]
    parts, rows = _frame(caption, members, series, scale, unit)
    by_group = dict(groups)
    for group, series_name, y in rows:
        marks = by_group[group][series_name]
        fill = colour(series_name, series)
        xs = [_LABELS + scale.x(v) for v in marks.values()]
        middle = y + _ROW / 2
        parts.append(f'<line x1="{min(xs):.1f}" y1="{middle:.1f}" x2="{max(xs):.1f}" '
                     f'y2="{middle:.1f}" stroke="{fill}" stroke-width="2"/>')
        for (name, value), x in zip(marks.items(), xs, strict=True):
            parts.append(
                f'<circle class="mark" cx="{x:.1f}" cy="{middle:.1f}" r="3.5" fill="{fill}"'
                f'{_data(group, series_name, value)} data-percentile="{escape(name)}">'
                f"<title>{escape(group)}, {escape(series_name)} {escape(name)}: "
                f"{figure(value)} {escape(unit)}</title></circle>")
        written = " · ".join(f"{name} {figure(value)}" for name, value in marks.items())
        parts.append(f'<text x="{_WIDTH - _RANGE_FIGURES + 10}" y="{y + 11:.0f}" '
                     f'class="figure">{escape(written)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _data(group: str, series: str, value: float) -> str:
    return (f' data-group="{escape(group)}" data-series="{escape(series)}" '
            f'data-value="{float(value)!r}"')


def _series_order(keys: Iterable[Iterable[str]]) -> list[str]:
    """Every series named, in the order first met."""
    order: dict[str, None] = {}
    for names in keys:
        order.update(dict.fromkeys(names))
    return list(order)
