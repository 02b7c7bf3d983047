"""The population-health page (`model:read`): cases, hospitalisations and deaths per 100,000 by state, from
the stored diagnoses (ICD-10 codes, COVID-19 U07.1 by default) or from an uploaded state CSV, drawn as bar
charts and a scatter of death rate on case rate with its least-squares line. Only per-state counts are
read; the view is audited once ("population:read")."""

from __future__ import annotations

from typing import Any

from flask import render_template, request
from markupsafe import Markup

from carecast.errors import CareCastError
from carecast.population import parse_state_csv, population_json, report_from_counts, report_from_csv
from carecast.security.permissions import Permission
from carecast.serving.auth import audit
from carecast.serving.context import services
from carecast.serving.errors import FieldError, Unprocessable
from carecast.serving.ui.blueprint import bp
from carecast.serving.ui.charts import bar_chart, scatter_chart
from carecast.serving.ui.session import UiAction, page
from carecast.store.population import DEFAULT_CODES, normalise_codes, state_counts

MAX_CSV_BYTES = 2 * 1024 * 1024
RATES = (("cases_per_100k", "Cases"), ("hospitalizations_per_100k", "Hospitalisations"),
         ("deaths_per_100k", "Deaths"))


def _charts(view: dict[str, Any]) -> dict[str, Markup]:
    states = view["states"]
    charts: dict[str, Markup] = {}
    for key, title in RATES:
        bars = sorted(((s["state"], float(s[key])) for s in states if s.get(key) is not None),
                      key=lambda b: (-b[1], b[0]))
        charts[key] = bar_chart(bars, label=f"{title} per 100,000 population by state")
    points = [(s["state"], float(s["cases_per_100k"]), float(s["deaths_per_100k"])) for s in states
              if s.get("cases_per_100k") is not None and s.get("deaths_per_100k") is not None]
    fit = view.get("regression")
    charts["scatter"] = scatter_chart(points, label="Death rate against case rate per 100,000, by state",
                                      x_label="Cases per 100,000", y_label="Deaths per 100,000",
                                      line=(fit["intercept"], fit["slope"]) if fit else None)
    return charts


def _codes() -> tuple[str, ...]:
    raw = (request.values.get("codes") or "").strip()
    if not raw:
        return DEFAULT_CODES
    try:
        return normalise_codes(c for c in raw.replace(";", ",").split(",") if c.strip())
    except CareCastError as exc:
        raise Unprocessable(exc.public_message, fields=[FieldError("form", "codes", "ICD-10 codes")]) from None


@bp.route("/population", methods=["GET", "POST"])
@page(Permission.MODEL_READ)
def population() -> str:
    upload = request.files.get("file") if request.method == "POST" else None
    codes = _codes()
    if upload is not None and upload.filename:
        data = upload.stream.read(MAX_CSV_BYTES + 1)
        if len(data) > MAX_CSV_BYTES:
            raise Unprocessable("the CSV file is larger than 2 MB")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Unprocessable("the CSV file is not UTF-8 text") from None
        try:
            report = report_from_csv(parse_state_csv(text, label="uploaded CSV"))
        except CareCastError as exc:
            raise Unprocessable(exc.public_message) from None
        detail = "uploaded CSV"
    else:
        report = report_from_counts(state_counts(services().store.engine, codes), codes)
        detail = "store, codes " + ",".join(codes)
    view = population_json(report)
    audit(UiAction.POPULATION_READ, detail=f"{detail}: {len(view['states'])} states")
    return render_template("population.html", view=view, charts=_charts(view), codes=", ".join(codes), rates=RATES)
