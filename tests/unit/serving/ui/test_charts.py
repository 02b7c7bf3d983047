"""The inline SVG charts: shapes, scales, normal range and threshold, tooltips, escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from carecast.serving.ui.charts import bar_chart, curve_chart, nice_ticks, scatter_chart, sparkline, time_chart

T0 = datetime(2026, 1, 5, 8, tzinfo=UTC)
NS = {"s": "http://www.w3.org/2000/svg"}


def _svg(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def test_time_chart_shades_the_normal_range_and_draws_the_threshold() -> None:
    points = [(T0 + timedelta(hours=h), v) for h, v in ((0, 80.0), (2, 95.0), (4, 130.0))]
    svg = _svg(time_chart(points, label="Heart rate", unit="/min", normal=(51, 90), threshold=120))
    normal = svg.find("s:rect[@class='normal']", NS)
    assert normal is not None and "Normal range 51/min to 90/min" in normal.find("s:title", NS).text
    line = svg.find("s:line[@class='threshold']", NS)
    assert line is not None
    dots = svg.findall("s:circle[@class='dot']", NS)
    assert [d.find("s:title", NS).text for d in dots] == ["05 Jan 08:00: 80/min", "05 Jan 10:00: 95/min",
                                                         "05 Jan 12:00: 130/min"]
    ys = [float(d.get("cy")) for d in dots]
    assert ys[0] > ys[1] > ys[2]  # higher values are drawn higher up
    threshold_y = float(line.get("y1"))
    assert ys[2] < threshold_y < ys[1]  # 130 is above the 120 line, 95 below it
    top, height = float(normal.get("y")), float(normal.get("height"))
    assert top < ys[0] < top + height and ys[1] < top  # 80 inside the normal band, 95 above it
    assert svg.get("role") == "img" and "latest 130/min" in svg.get("aria-label")


def test_percent_charts_and_empty_charts() -> None:
    svg = _svg(time_chart([(T0, 0.25)], label="Risk", percent=True, threshold=0.3, y_min=0, y_max=1))
    assert svg.find("s:circle/s:title", NS).text.endswith("25%")
    empty = _svg(time_chart([], label="Lactate"))
    assert "no values" in empty.get("aria-label") and empty.find("s:text", NS).text == "No lactate in this period"


def test_text_is_escaped() -> None:
    svg = str(time_chart([(T0, 1.0)], label="<script>alert(1)</script>"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "<b>" not in str(bar_chart([("<b>", 1.0)], label="x"))


def test_sparkline_goes_from_first_to_last() -> None:
    spark = _svg(sparkline([(T0, 0.1), (T0 + timedelta(hours=1), 0.5)], threshold=0.3))
    assert spark.get("aria-label") == "Risk trend: from 10% to 50% (2 scores)"
    coords = [tuple(map(float, p.split(","))) for p in spark.find("s:polyline", NS).get("points").split()]
    assert coords[0][0] < coords[1][0] and coords[0][1] > coords[1][1]
    assert "no scores yet" in _svg(sparkline([])).get("aria-label")


def test_curves_bars_and_scatter() -> None:
    roc = _svg(curve_chart([("m", [(0.0, 0.0), (0.2, 0.7), (1.0, 1.0)])], label="ROC", x_label="FPR",
                           y_label="TPR"))
    assert roc.find("s:line[@class='diagonal']", NS) is not None and len(roc.findall("s:circle", NS)) == 3
    bars = _svg(bar_chart([("NY", 200.0), ("CA", 100.0)], label="Cases"))
    widths = [float(r.get("width")) for r in bars.findall("s:rect", NS)]
    assert abs(widths[0] - 2 * widths[1]) < 0.2  # bars are proportional to their values
    scatter = _svg(scatter_chart([("NY", 10.0, 1.0), ("CA", 20.0, 2.0)], label="s", x_label="c", y_label="d",
                                 line=(0.0, 0.1)))
    fit = scatter.find("s:line[@class='fit']", NS)
    assert fit is not None and fit.find("s:title", NS).text == "Least-squares line"


def test_nice_ticks() -> None:
    assert nice_ticks(0, 100) == [0, 50, 100]  # steps of 1, 2 or 5 times a power of ten
    assert nice_ticks(0.0, 1.0) == [0.0, 0.5, 1.0]
    assert nice_ticks(36.0, 39.5) == [36.0, 37.0, 38.0, 39.0]
    assert nice_ticks(5, 5) == [5]
