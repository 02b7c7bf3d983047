"""The report: the four-panel figure, the table and the JSON view all carry the same per-state figures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

from carecast.population import (
    PopulationReport,
    build_figure,
    figure_png,
    parse_state_csv,
    population_json,
    report_from_counts,
    report_from_csv,
    write_figure,
    write_table,
)
from carecast.population.census import StatePopulations

CSV = """State,Date,Total Cases,Total Deaths,Total Hospitalizations,Population
OH,2021-01-02,1000,20,100,100000
TX,2021-01-02,2000,30,,100000
VT,2021-01-02,3000,60,300,100000
WA,2021-01-02,4000,70,400,100000
Atlantis,2021-01-02,1,0,0,1000
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def report() -> PopulationReport:
    return report_from_csv(parse_state_csv(CSV, "states.csv"))


def test_four_panels_with_bars_per_state_and_the_ols_line(report: PopulationReport) -> None:
    fig = build_figure(report)
    axes = fig.get_axes()
    assert len(axes) == 4
    assert [a.get_title() for a in axes] == ["Cases per 100,000", "Hospitalisations per 100,000",
                                             "Deaths per 100,000", "Death rate against case rate"]
    cases, hosp, deaths, scatter = axes
    bars = [p for p in cases.patches if isinstance(p, Rectangle)]
    assert [b.get_height() for b in bars] == pytest.approx([4000, 3000, 2000, 1000])  # highest first
    assert [t.get_text() for t in cases.get_xticklabels()] == ["WA", "VT", "TX", "OH"]
    assert len(hosp.patches) == 3  # Texas has no hospitalisation total
    assert [b.get_height() for b in deaths.patches] == pytest.approx([70, 60, 30, 20])
    [points] = [c for c in scatter.collections if isinstance(c, PathCollection)]
    assert len(points.get_offsets()) == 4
    [line] = scatter.get_lines()
    fit = report.fit
    assert fit is not None
    xs, ys = line.get_data()
    assert list(xs) == pytest.approx([1000, 4000]) and list(ys) == pytest.approx([fit.predict(1000), fit.predict(4000)])
    legend = scatter.get_legend().get_texts()[0].get_text()
    assert f"R² = {fit.r_squared:.3f}" in legend and "n = 4" in legend


def test_png_and_table_are_written(report: PopulationReport, tmp_path: Path) -> None:
    write_figure(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes().startswith(PNG_MAGIC)
    write_table(report, tmp_path / "r.csv")
    table = pd.read_csv(tmp_path / "r.csv")
    assert table["state"].tolist() == ["OH", "TX", "VT", "WA"]
    assert table.loc[0, "cases_per_100k"] == pytest.approx(1000.0)
    assert table.loc[1, "as_of"] == "2021-01-02" and pd.isna(table.loc[1, "hospitalizations_per_100k"])
    assert list(table.columns) == ["state", "name", "as_of", "population", "cases", "hospitalizations", "deaths",
                                   "cases_per_100k", "hospitalizations_per_100k", "deaths_per_100k"]


def test_json_view_is_plain_and_complete(report: PopulationReport) -> None:
    view = population_json(report)
    json.dumps(view, allow_nan=False)  # no NaN, no numpy or pandas types
    assert view["source"] == {"kind": "csv", "label": "states.csv", "codes": [],
                              "population_source": "the Population column of states.csv"}
    tx = next(s for s in view["states"] if s["state"] == "TX")
    assert tx == {"state": "TX", "name": "Texas", "as_of": "2021-01-02", "population": 100000, "cases": 2000,
                  "hospitalizations": None, "deaths": 30, "cases_per_100k": 2000.0,
                  "hospitalizations_per_100k": None, "deaths_per_100k": 30.0}
    assert all(type(s["cases"]) is int and type(s["deaths_per_100k"]) is float for s in view["states"])
    reg = view["regression"]
    assert report.fit is not None
    assert reg["n"] == 4 and reg["slope"] == pytest.approx(report.fit.slope)
    assert reg["line"]["x"] == [1000.0, 4000.0]
    assert reg["line"]["y"][1] == pytest.approx(report.fit.intercept + report.fit.slope * 4000)
    assert view["problems"] == [{"row": 6, "column": "State", "reason": "is not a US state or territory code or name"}]


def test_report_from_stored_counts() -> None:
    counts = pd.DataFrame({"state": ["OH", "GU", None], "cases": [10, 2, 3], "hospitalizations": [5, 1, 1],
                           "deaths": [1, 0, 0]})
    report = report_from_counts(counts, ["U07.1"], StatePopulations({"OH": 1_000_000}, "test census"))
    view = population_json(report)
    assert view["source"] == {"kind": "store", "label": "stored patients with ICD-10 U07.1", "codes": ["U07.1"],
                              "population_source": "test census"}
    assert [s["state"] for s in view["states"]] == ["OH"] and view["states"][0]["as_of"] is None
    assert view["states"][0]["cases_per_100k"] == pytest.approx(1.0)
    assert view["excluded"][0]["state"] == "GU" and view["unknown_state"] == 3
    assert view["regression"] is None  # one state: no line
    assert figure_png(report).startswith(PNG_MAGIC)  # draws without a regression line


def test_empty_report_still_renders() -> None:
    report = report_from_csv(parse_state_csv(CSV.splitlines()[0] + "\n"))
    assert report.states == 0 and report.fit is None
    assert population_json(report)["states"] == []
    assert figure_png(report).startswith(PNG_MAGIC)
