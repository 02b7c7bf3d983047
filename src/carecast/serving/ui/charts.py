"""Charts as inline SVG, drawn on the server: sparklines, values on a time axis (with the normal range shaded
and an alert threshold line), x-y curves (calibration, ROC), bar charts and scatter plots with a fitted line.

Pure functions of their data: no Flask, no database. Every point carries a `<title>` (the browser's tooltip,
read by screen readers too) and every chart a `<title>` and `role="img"` with an `aria-label`. Colours come
from the page's stylesheet through class names, so the Content-Security-Policy needs no inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup, escape

TimePoint = tuple[datetime, float]


@dataclass(frozen=True)
class Box:
    """The plotting area inside an SVG of `width` x `height` (margins for the axes' labels)."""

    width: int
    height: int
    left: int = 48
    right: int = 12
    top: int = 12
    bottom: int = 28

    @property
    def inner_width(self) -> float:
        return float(self.width - self.left - self.right)

    @property
    def inner_height(self) -> float:
        return float(self.height - self.top - self.bottom)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def fmt_value(value: float) -> str:
    """A reading as shown in a tooltip: 112, 37.9, 2.35."""
    if float(value).is_integer():
        return str(int(value))
    size = abs(value)
    text = f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _svg(box: Box, label: str, body: list[str], css: str = "chart") -> Markup:
    text = escape(label)
    # Every text inserted into `body` was escaped where it was built; numbers are formatted here.
    return Markup(  # noqa: S704
        f'<svg class="{css}" viewBox="0 0 {box.width} {box.height}" width="{box.width}" height="{box.height}" '
        f'role="img" aria-label="{text}" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{text}</title>{''.join(body)}</svg>")


def _scale(lo: float, hi: float, out_lo: float, out_hi: float) -> Callable[[float], float]:
    span = hi - lo or 1.0

    def f(v: float) -> float:
        return out_lo + (v - lo) / span * (out_hi - out_lo)

    return f


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """About `count` round values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _time_ticks(start: datetime, end: datetime, count: int = 5) -> list[datetime]:
    span = (end - start).total_seconds()
    if span <= 0:
        return [start]
    hours = next((h for h in (1, 2, 3, 6, 12, 24, 48, 96, 168) if span / 3600 / h <= count), 336)
    step = timedelta(hours=hours)
    first = start.replace(minute=0, second=0, microsecond=0)
    if hours >= 24:
        first = first.replace(hour=0)
    while first < start:
        first += step
    out = []
    tick = first
    while tick <= end:
        out.append(tick)
        tick += step
    return out


def _time_label(t: datetime, span: timedelta) -> str:
    return t.strftime("%d %b %H:%M") if span > timedelta(hours=36) else t.strftime("%H:%M")


def sparkline(points: Sequence[TimePoint], *, width: int = 120, height: int = 28, threshold: float | None = None,
              label: str = "Risk trend") -> Markup:
    """A small line of risk (0-1) over time, the threshold as a faint line; the last point marked."""
    box = Box(width, height, left=2, right=4, top=3, bottom=3)
    if not points:
        return _svg(box, f"{label}: no scores yet", [], css="spark")
    t0, t1 = points[0][0], points[-1][0]
    if t1 <= t0:
        t1 = t0 + timedelta(minutes=1)
    top = max(max(v for _, v in points), threshold or 0.0) * 1.1 or 1.0
    x = _scale(t0.timestamp(), t1.timestamp(), box.left, box.width - box.right)
    y = _scale(0.0, top, box.height - box.bottom, box.top)
    body = []
    if threshold is not None:
        body.append(f'<line class="threshold" x1="{box.left}" x2="{box.width - box.right}" y1="{y(threshold):.1f}" '
                    f'y2="{y(threshold):.1f}"/>')
    coords = " ".join(f"{x(t.timestamp()):.1f},{y(v):.1f}" for t, v in points)
    body.append(f'<polyline class="line" points="{coords}"/>')
    lt, lv = points[-1]
    body.append(f'<circle class="last" cx="{x(lt.timestamp()):.1f}" cy="{y(lv):.1f}" r="2.5"/>')
    first, last = points[0][1], points[-1][1]
    return _svg(box, f"{label}: from {first:.0%} to {last:.0%} ({len(points)} scores)", body, css="spark")


def time_chart(points: Sequence[TimePoint], *, label: str, unit: str = "", start: datetime | None = None,
               end: datetime | None = None, normal: tuple[float | None, float | None] | None = None,
               threshold: float | None = None, percent: bool = False, y_min: float | None = None,
               y_max: float | None = None, width: int = 640, height: int = 170) -> Markup:
    """Values on a time axis: a line with a dot per value (tooltip: time and value), the normal range as a
    shaded band and an alert threshold as a dashed line (both labelled)."""
    box = Box(width, height)
    if not points:
        return _svg(box, f"{label}: no values in this period",
                    [f'<text class="empty" x="{box.width / 2:.0f}" y="{box.height / 2:.0f}" text-anchor="middle">'
                     f"No {escape(label.lower())} in this period</text>"])
    start = start or points[0][0]
    end = end or points[-1][0]
    if end <= start:
        end = start + timedelta(hours=1)
    values = [v for _, v in points]
    extra = [v for v in (*(normal or ()), threshold) if v is not None]
    lo = min([*values, *extra]) if y_min is None else y_min
    hi = max([*values, *extra]) if y_max is None else y_max
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1.0)
    lo = lo - pad if y_min is None else lo
    hi = hi + pad if y_max is None else hi
    x = _scale(start.timestamp(), end.timestamp(), box.left, box.width - box.right)
    y = _scale(lo, hi, box.height - box.bottom, box.top)

    def show(v: float) -> str:
        return f"{v:.0%}" if percent else f"{fmt_value(v)}{unit}"

    body: list[str] = []
    if normal is not None and (normal[0] is not None or normal[1] is not None):
        n_lo = max(lo, normal[0] if normal[0] is not None else lo)
        n_hi = min(hi, normal[1] if normal[1] is not None else hi)
        if n_hi > n_lo:
            body.append(f'<rect class="normal" x="{box.left}" y="{y(n_hi):.1f}" width="{box.inner_width:.1f}" '
                        f'height="{y(n_lo) - y(n_hi):.1f}"><title>Normal range {escape(show(n_lo))} to '
                        f"{escape(show(n_hi))}</title></rect>")
    for tick in nice_ticks(lo, hi):
        ty = y(tick)
        text = f"{tick:.0%}" if percent else _num(tick)
        body.append(f'<line class="grid" x1="{box.left}" x2="{box.width - box.right}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
                    f'<text class="tick" x="{box.left - 4}" y="{ty + 4:.1f}" text-anchor="end">{text}</text>')
    span = end - start
    for moment in _time_ticks(start, end):
        tx = x(moment.timestamp())
        body.append(f'<text class="tick" x="{tx:.1f}" y="{box.height - 8}" text-anchor="middle">'
                    f"{_time_label(moment, span)}</text>")
    body.append(f'<line class="axis" x1="{box.left}" x2="{box.width - box.right}" y1="{box.height - box.bottom}" '
                f'y2="{box.height - box.bottom}"/>')
    if threshold is not None:
        ty = y(threshold)
        body.append(f'<line class="threshold" x1="{box.left}" x2="{box.width - box.right}" y1="{ty:.1f}" '
                    f'y2="{ty:.1f}"><title>Alert threshold {escape(show(threshold))}</title></line>'
                    f'<text class="threshold-label" x="{box.width - box.right - 2}" y="{ty - 4:.1f}" '
                    f'text-anchor="end">alert threshold {escape(show(threshold))}</text>')
    coords = " ".join(f"{x(t.timestamp()):.1f},{y(v):.1f}" for t, v in points)
    body.append(f'<polyline class="line" points="{coords}"/>')
    for t, v in points:
        body.append(f'<circle class="dot" cx="{x(t.timestamp()):.1f}" cy="{y(v):.1f}" r="3">'
                    f"<title>{t:%d %b %H:%M}: {escape(show(v))}</title></circle>")
    summary = f"{label}: {len(points)} values from {points[0][0]:%d %b %H:%M} to {points[-1][0]:%d %b %H:%M}, " \
              f"latest {show(points[-1][1])}"
    return _svg(box, summary, body)


def curve_chart(curves: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, label: str, x_label: str,
                y_label: str, diagonal: bool = True, width: int = 320, height: int = 300,
                point_titles: Sequence[Sequence[str]] | None = None) -> Markup:
    """Curves on [0, 1] x [0, 1] (calibration: predicted against observed; ROC: 1-specificity against
    sensitivity), with the diagonal of a perfect calibration or of chance."""
    box = Box(width, height, left=44, bottom=40)
    x = _scale(0.0, 1.0, box.left, box.width - box.right)
    y = _scale(0.0, 1.0, box.height - box.bottom, box.top)
    body: list[str] = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        body.append(f'<line class="grid" x1="{box.left}" x2="{box.width - box.right}" y1="{y(tick):.1f}" '
                    f'y2="{y(tick):.1f}"/><text class="tick" x="{box.left - 4}" y="{y(tick) + 4:.1f}" '
                    f'text-anchor="end">{_num(tick)}</text><text class="tick" x="{x(tick):.1f}" '
                    f'y="{box.height - box.bottom + 14}" text-anchor="middle">{_num(tick)}</text>')
    body.append(f'<text class="axis-label" x="{box.left + box.inner_width / 2:.0f}" y="{box.height - 4}" '
                f'text-anchor="middle">{escape(x_label)}</text>'
                f'<text class="axis-label" x="12" y="{box.top + box.inner_height / 2:.0f}" text-anchor="middle" '
                f'transform="rotate(-90 12 {box.top + box.inner_height / 2:.0f})">{escape(y_label)}</text>')
    if diagonal:
        body.append(f'<line class="diagonal" x1="{x(0):.1f}" y1="{y(0):.1f}" x2="{x(1):.1f}" y2="{y(1):.1f}"/>')
    for i, (name, pts) in enumerate(curves):
        if not pts:
            continue
        coords = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
        body.append(f'<polyline class="line series-{i}" points="{coords}"><title>{escape(name)}</title></polyline>')
        titles = point_titles[i] if point_titles is not None and i < len(point_titles) else None
        for j, (a, b) in enumerate(pts):
            tip = titles[j] if titles is not None and j < len(titles) else f"{x_label} {a:.2f}, {y_label} {b:.2f}"
            body.append(f'<circle class="dot series-{i}" cx="{x(a):.1f}" cy="{y(b):.1f}" r="3">'
                        f"<title>{escape(tip)}</title></circle>")
    return _svg(box, label, body)


def bar_chart(bars: Sequence[tuple[str, float]], *, label: str, unit: str = "", width: int = 640,
              bar_height: int = 16) -> Markup:
    """Horizontal bars, one per category, largest first as given; the value written at each bar's end."""
    box = Box(width, 24 + bar_height * max(len(bars), 1) + 8, left=120, right=70, top=8, bottom=16)
    if not bars:
        return _svg(box, f"{label}: no data", [])
    hi = max(max(v for _, v in bars), 0.0) or 1.0
    x = _scale(0.0, hi, box.left, box.width - box.right)
    body: list[str] = []
    for i, (name, value) in enumerate(bars):
        top = box.top + i * bar_height
        w = max(x(max(value, 0.0)) - box.left, 0.5)
        text = f"{escape(name)}: {fmt_value(value)}{escape(unit)}"
        body.append(f'<text class="tick" x="{box.left - 6}" y="{top + bar_height * 0.72:.1f}" text-anchor="end">'
                    f"{escape(name)}</text><rect class=\"bar\" x=\"{box.left}\" y=\"{top + 2}\" width=\"{w:.1f}\" "
                    f'height="{bar_height - 4}"><title>{text}</title></rect>'
                    f'<text class="value" x="{box.left + w + 4:.1f}" y="{top + bar_height * 0.72:.1f}">'
                    f"{fmt_value(value)}</text>")
    return _svg(box, label, body)


def scatter_chart(points: Sequence[tuple[str, float, float]], *, label: str, x_label: str, y_label: str,
                  line: tuple[float, float] | None = None, width: int = 480, height: int = 320) -> Markup:
    """Labelled points (name, x, y) and an optional fitted line y = intercept + slope * x."""
    box = Box(width, height, left=56, bottom=42)
    if not points:
        return _svg(box, f"{label}: no data", [])
    xs = [p[1] for p in points]
    ys = [p[2] for p in points]
    x_lo, x_hi = min(0.0, *xs), max(xs) * 1.05 or 1.0
    y_lo, y_hi = min(0.0, *ys), max(ys) * 1.05 or 1.0
    x = _scale(x_lo, x_hi, box.left, box.width - box.right)
    y = _scale(y_lo, y_hi, box.height - box.bottom, box.top)
    body: list[str] = []
    for tick in nice_ticks(y_lo, y_hi):
        body.append(f'<line class="grid" x1="{box.left}" x2="{box.width - box.right}" y1="{y(tick):.1f}" '
                    f'y2="{y(tick):.1f}"/><text class="tick" x="{box.left - 4}" y="{y(tick) + 4:.1f}" '
                    f'text-anchor="end">{fmt_value(tick)}</text>')
    for tick in nice_ticks(x_lo, x_hi):
        body.append(f'<text class="tick" x="{x(tick):.1f}" y="{box.height - box.bottom + 14}" '
                    f'text-anchor="middle">{fmt_value(tick)}</text>')
    body.append(f'<text class="axis-label" x="{box.left + box.inner_width / 2:.0f}" y="{box.height - 4}" '
                f'text-anchor="middle">{escape(x_label)}</text>'
                f'<text class="axis-label" x="12" y="{box.top + box.inner_height / 2:.0f}" text-anchor="middle" '
                f'transform="rotate(-90 12 {box.top + box.inner_height / 2:.0f})">{escape(y_label)}</text>')
    if line is not None:
        intercept, slope = line
        body.append(f'<line class="fit" x1="{x(x_lo):.1f}" y1="{y(intercept + slope * x_lo):.1f}" '
                    f'x2="{x(x_hi):.1f}" y2="{y(intercept + slope * x_hi):.1f}"><title>Least-squares line</title>'
                    "</line>")
    for name, a, b in points:
        body.append(f'<circle class="dot" cx="{x(a):.1f}" cy="{y(b):.1f}" r="4"><title>{escape(name)}: '
                    f"{escape(x_label)} {fmt_value(a)}, {escape(y_label)} {fmt_value(b)}</title></circle>")
    return _svg(box, label, body)
