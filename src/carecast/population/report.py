"""The population-health report: rates by state, the OLS fit, and their figure, table and JSON view."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from carecast.population.census import StatePopulations, load_state_populations
from carecast.population.rates import METRICS, RATE_COLUMNS, latest_totals, rates_per_100k, totals_from_counts
from carecast.population.regression import OlsFit, fit_death_on_case
from carecast.population.statecsv import RowProblem, StateCsv

_LABELS = {"cases": "Cases", "hospitalizations": "Hospitalisations", "deaths": "Deaths"}
_COLOURS = {"cases": "#1f77b4", "hospitalizations": "#ff7f0e", "deaths": "#7f2704"}


@dataclass(slots=True)
class PopulationReport:
    """Rates by state (one row per state, see `rates_per_100k`) and what they came from."""

    rates: pd.DataFrame
    fit: OlsFit | None
    source: str  # "csv" | "store"
    label: str  # the file name, or the diagnosis codes counted in the store
    population_source: str  # where the populations divided by come from
    codes: tuple[str, ...] = ()
    problems: list[RowProblem] = field(default_factory=list)  # quarantined CSV rows
    excluded: list[dict[str, str]] = field(default_factory=list)  # states left out, with why
    unknown_state: int = 0  # stored patients counted without a state

    @property
    def states(self) -> int:
        return len(self.rates)


def report_from_csv(data: StateCsv) -> PopulationReport:
    """From validated CSV rows: each state's latest cumulative totals over the population of that row."""
    rates = rates_per_100k(latest_totals(data.rows))
    return PopulationReport(rates=rates, fit=fit_death_on_case(rates), source="csv", label=data.label,
                            population_source=f"the Population column of {data.label}",
                            problems=list(data.problems))


def report_from_counts(counts: pd.DataFrame, codes: Sequence[str],
                       populations: StatePopulations | None = None) -> PopulationReport:
    """From per-state patient counts of the store (`carecast.store.population.state_counts`), over the
    shipped 2020 Census populations."""
    pops = populations or load_state_populations()
    totals, excluded, unknown = totals_from_counts(counts, pops)
    rates = rates_per_100k(totals)
    return PopulationReport(rates=rates, fit=fit_death_on_case(rates), source="store",
                            label="stored patients with ICD-10 " + ", ".join(codes), population_source=pops.source,
                            codes=tuple(codes), excluded=excluded, unknown_state=unknown)


# -- table ---------------------------------------------------------------------------------------------------

def table(report: PopulationReport) -> pd.DataFrame:
    """The per-state figures as written to the table file."""
    out = report.rates.copy()
    out["as_of"] = [_iso_date(v) for v in out["as_of"]]
    return out


def write_table(report: PopulationReport, path: Path) -> None:
    table(report).to_csv(path, index=False, float_format="%.6g")


# -- figure --------------------------------------------------------------------------------------------------

def build_figure(report: PopulationReport) -> Figure:
    """Four panels: cases, hospitalisations and deaths per 100,000 by state (bars, highest first), and the
    death rate against the case rate with the OLS line and R squared."""
    fig = Figure(figsize=(16, 11), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    fig.suptitle(f"Per 100,000 population by state: {report.label}", fontsize=13)
    for ax, metric in zip(axes.flat[:3], METRICS, strict=True):
        _bars(ax, report.rates, metric)
    _scatter(axes.flat[3], report.rates, report.fit)
    return fig


def _bars(ax: Axes, rates: pd.DataFrame, metric: str) -> None:
    column = RATE_COLUMNS[metric]
    shown = rates[["state", column]].dropna().sort_values(column, ascending=False, kind="stable")
    ax.set_title(f"{_LABELS[metric]} per 100,000")
    ax.set_ylabel("per 100,000 population")
    if shown.empty:
        ax.text(0.5, 0.5, f"no {_LABELS[metric].lower()} figures", ha="center", va="center",
                transform=ax.transAxes)
        return
    ax.bar(shown["state"], shown[column], color=_COLOURS[metric])
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.margins(x=0.01)


def _scatter(ax: Axes, rates: pd.DataFrame, fit: OlsFit | None) -> None:
    ax.set_title("Death rate against case rate")
    ax.set_xlabel("cases per 100,000")
    ax.set_ylabel("deaths per 100,000")
    points = rates[["state", "cases_per_100k", "deaths_per_100k"]].dropna()
    ax.scatter(points["cases_per_100k"], points["deaths_per_100k"], s=18, color=_COLOURS["deaths"], zorder=3)
    for row in points.itertuples(index=False):
        ax.annotate(row.state, (row.cases_per_100k, row.deaths_per_100k), fontsize=6,
                    xytext=(2, 2), textcoords="offset points")
    if fit is not None:
        x0, x1 = float(points["cases_per_100k"].min()), float(points["cases_per_100k"].max())
        ax.plot([x0, x1], [fit.predict(x0), fit.predict(x1)], color="black", linewidth=1.2,
                label=f"OLS: {_equation(fit)};  R² = {fit.r_squared:.3f} (n = {fit.n})")
        ax.legend(loc="upper left", fontsize=9)
    else:
        ax.text(0.5, 0.9, "too few states for a regression line", ha="center", transform=ax.transAxes)


def _equation(fit: OlsFit) -> str:
    sign = "-" if fit.intercept < 0 else "+"
    return f"y = {fit.slope:.4g} x {sign} {abs(fit.intercept):.4g}"


def figure_png(report: PopulationReport, dpi: int = 100) -> bytes:
    """The four-panel figure as PNG bytes (for a web page)."""
    buffer = io.BytesIO()
    build_figure(report).savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_figure(report: PopulationReport, path: Path, dpi: int = 100) -> None:
    path.write_bytes(figure_png(report, dpi))


# -- JSON view -----------------------------------------------------------------------------------------------

def population_json(report: PopulationReport) -> dict[str, Any]:
    """The report as JSON-ready dicts (plain str, int, float, None; no NaN) for the web page.

    Keys: source {kind, label, codes, population_source}; states [{state, name, as_of, population, cases,
    hospitalizations, deaths, cases_per_100k, hospitalizations_per_100k, deaths_per_100k}] sorted by state
    (missing figures are None); regression {slope, intercept, r_squared, n, line {x: [x0, x1], y: [y0, y1]}}
    or None; problems [{row, column, reason}]; excluded [{state, reason}]; unknown_state.
    """
    states = [{key: _plain(value) for key, value in row.items()} for row in table(report).to_dict("records")]
    regression = None
    if report.fit is not None:
        xs = [s["cases_per_100k"] for s in states if s["cases_per_100k"] is not None
              and s["deaths_per_100k"] is not None]
        x0, x1 = min(xs), max(xs)
        regression = {"slope": report.fit.slope, "intercept": report.fit.intercept,
                      "r_squared": report.fit.r_squared, "n": report.fit.n,
                      "line": {"x": [x0, x1], "y": [report.fit.predict(x0), report.fit.predict(x1)]}}
    return {
        "source": {"kind": report.source, "label": report.label, "codes": list(report.codes),
                   "population_source": report.population_source},
        "states": states,
        "regression": regression,
        "problems": [{"row": p.row, "column": p.column, "reason": p.reason} for p in report.problems],
        "excluded": [dict(e) for e in report.excluded],
        "unknown_state": report.unknown_state,
    }


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return value


def _iso_date(value: Any) -> str | None:
    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).date().isoformat()
