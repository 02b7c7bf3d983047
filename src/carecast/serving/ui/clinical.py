"""Ward and patient pages (`patient:read`), break-glass, alert acknowledge / dismiss, and the live parts:
table and risk-panel fragments the page's script reloads, and a session-authenticated event stream.

Patient data is read through `ClinicalReader` and the scorer's read functions (no SQL here). Every request
that shows patient data leaves one audit row, with the API's action tags: the ward is "patient:list", a
patient page "patient:read", its refreshed risk panel "prediction:read"; a refusal is one "auth:denied" row.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, g, redirect, render_template, request, url_for
from markupsafe import Markup

from carecast.domain.variables import catalogue
from carecast.models.metrics import age_band
from carecast.models.registry import card_threshold
from carecast.models.tasks import TASKS
from carecast.monitoring.metrics import observe_feedback
from carecast.scoring.predictor import DEFAULT_THRESHOLD
from carecast.scoring.scorer import (
    StoredPrediction,
    current_risks,
    latest_predictions,
    risk_trajectories,
    risk_trajectory,
)
from carecast.security.access import BreakGlassError, can_see_patient, open_break_glass
from carecast.security.permissions import Permission, Principal
from carecast.security.users import principal_for
from carecast.serving.auth import Action, audit, deny
from carecast.serving.context import Services, principal, services
from carecast.serving.errors import FieldError, NotFound, Unprocessable
from carecast.serving.stream import StreamHub, _Stream, _visibility, open_event_stream
from carecast.serving.ui.blueprint import bp
from carecast.serving.ui.charts import TimePoint, sparkline, time_chart
from carecast.serving.ui.session import SESSION_SCHEME, UiAction, page, remaining_seconds
from carecast.store import alert_feedback
from carecast.store.clinical import ClinicalReader, ObservationRow, PatientRow, Stay

SORT_TASK = "deterioration_24h"  # the ward is sorted by current deterioration risk, as the API's list
TREND = timedelta(hours=24)
TRAJECTORY = timedelta(days=7)
CHART_WINDOW = timedelta(hours=72)
VITALS = ("heart_rate", "respiratory_rate", "spo2", "systolic_bp", "diastolic_bp", "temperature", "gcs_total")
MAX_OBSERVATIONS = 5000
BREAK_GLASS_MINUTES = (15, 30, 60, 120, 240)
# Chart titles where the LOINC display is too long for a caption.
SHORT_NAMES = {"spo2": "SpO2", "gcs_total": "Glasgow coma score", "crp": "CRP", "wbc": "White cell count",
               "egfr": "eGFR", "alt": "ALT", "ast": "AST", "hba1c": "HbA1c", "rbc": "Red cell count",
               "hdl": "HDL cholesterol", "ldl": "LDL cholesterol"}


# -- helpers ----------------------------------------------------------------------------------------------

def _reader() -> ClinicalReader:
    store = services().store
    return ClinicalReader(store.engine, store.keyring)


def thresholds() -> dict[str, float]:
    """The alert threshold of each task's champion (its card's chosen threshold), else the scorer's default.
    Read from the registry once per request (a page asks for them from several places)."""
    found: dict[str, float] | None = g.get("thresholds")
    if found is not None:
        return found
    out = {task: DEFAULT_THRESHOLD for task in TASKS}
    registry = services().registry
    for task in TASKS:
        if registry is None:
            break
        try:
            out[task] = card_threshold(registry.card(task, "champion")) or DEFAULT_THRESHOLD
        except Exception:  # noqa: S112 - no champion yet, or an unreadable registry: keep the default
            continue
    g.thresholds = out
    return out


def _label(reader: ClinicalReader, patient: PatientRow, who: Principal) -> dict[str, Any]:
    """How a patient is named on a page: name and MRN for roles that may see them, else the public uid."""
    age = reader.age(patient)
    out: dict[str, Any] = {"uid": patient.uid, "sex": patient.sex or "unknown",
                           "age_band": str(age_band([age])[0]) if age is not None else "unknown",
                           "name": None, "mrn": None, "birth_date": None}
    if who.can(Permission.PATIENT_DEMOGRAPHICS):
        demo = reader.demographics(patient)
        names = [demo.get("family_name"), demo.get("given_names")]
        out["name"] = ", ".join(n for n in names if n) or None
        out["mrn"] = demo.get("mrn")
        out["birth_date"] = demo.get("birth_date")
    return out


def _feedback(predictions: Iterable[StoredPrediction]) -> dict[str, alert_feedback.AlertFeedback]:
    """The latest acknowledgement or dismissal of each alert (high-band score) among these, in one query."""
    ids = [alert_feedback.alert_id(p.id) for p in predictions if p.band == "high"]
    return alert_feedback.latest_feedback(services().store.engine, ids)


def _alerts(predictions: Iterable[StoredPrediction],
            feedback: dict[str, alert_feedback.AlertFeedback] | None = None) -> list[dict[str, Any]]:
    """High-band current scores are alerts; each with its latest acknowledgement or dismissal (read here
    unless the caller read them for many patients at once)."""
    high = [p for p in predictions if p.band == "high"]
    if feedback is None:
        feedback = _feedback(high)
    out = []
    for p in sorted(high, key=lambda x: (-x.risk, x.task)):
        done = feedback.get(alert_feedback.alert_id(p.id))
        status = "open" if done is None else "acknowledged" if done.outcome == alert_feedback.ACKNOWLEDGED \
            else "dismissed"
        out.append({"prediction_id": p.id, "task": p.task, "risk": p.risk, "data_time": p.data_time,
                    "status": status, "reason": None if done is None or not done.reason_code
                    else alert_feedback.DISMISS_REASONS.get(done.reason_code, done.reason_code),
                    "at": None if done is None else done.outcome_at})
    return out


# -- the ward -----------------------------------------------------------------------------------------------

@dataclass
class WardRow:
    patient: dict[str, Any]
    unit: str | None
    bed: str | None
    admitted_at: datetime | None
    risk: float | None
    band: str | None
    news2: int | None
    data_time: datetime | None
    last_vitals: datetime | None
    trend: Markup
    open_alerts: int
    model_version: str | None
    other_risks: dict[str, StoredPrediction] = field(default_factory=dict)


def _ward_units(reader: ClinicalReader, who: Principal) -> list[str]:
    return sorted(who.units) if who.unit_restricted else reader.units()


def ward_rows(who: Principal, unit: str | None) -> list[WardRow]:
    """In-house patients the user may list (their units), highest current deterioration risk first."""
    reader = _reader()
    engine = services().store.engine
    stays: list[Stay] = reader.current_stays(unit=unit, units=sorted(who.units) if who.unit_restricted else None)
    ids = [s.patient.id for s in stays]
    by_task: dict[str, dict[int, StoredPrediction]] = {task: current_risks(engine, task, ids) for task in TASKS} \
        if ids else {}
    last_vitals = reader.last_observation_times(ids, category="vital-signs")
    limits = thresholds()
    sorting = by_task.get(SORT_TASK) or {}
    trends = risk_trajectories(engine, SORT_TASK, {pid: (p.data_time - TREND, p.data_time)
                                                   for pid, p in sorting.items()})
    feedback = _feedback([p for found in by_task.values() for p in found.values()])
    rows = []
    for stay in stays:
        pid = stay.patient.id
        current = sorting.get(pid)
        trend: list[TimePoint] = [(p.data_time, p.risk) for p in trends.get(pid, [])]
        mine = {task: found[pid] for task, found in by_task.items() if pid in found}
        rows.append(WardRow(
            patient=_label(reader, stay.patient, who), unit=stay.unit, bed=stay.bed, admitted_at=stay.admitted_at,
            risk=None if current is None else current.risk, band=None if current is None else current.band,
            news2=next((p.news2 for p in ([current] if current else []) + list(mine.values()) if p.news2 is not None),
                       None),
            data_time=None if current is None else current.data_time, last_vitals=last_vitals.get(pid),
            trend=sparkline(trend, threshold=limits.get(SORT_TASK), label="Deterioration risk, last 24 h"),
            open_alerts=sum(1 for a in _alerts(mine.values(), feedback) if a["status"] == "open"),
            model_version=None if current is None else current.model_version,
            other_risks={t: p for t, p in mine.items() if t != SORT_TASK}))
    rows.sort(key=lambda r: (-(r.risk if r.risk is not None else -1.0), r.patient["uid"]))
    return rows


def _unit_arg(who: Principal) -> str | None:
    unit = (request.args.get("unit") or "").strip() or None
    if unit is not None and (len(unit) > 64 or (who.unit_restricted and unit not in who.units)):
        raise deny("unit outside the caller's units")
    return unit


@bp.get("/ward")
@page(Permission.PATIENT_READ)
def ward() -> str:
    who = principal()
    reader = _reader()
    unit = _unit_arg(who)
    rows = ward_rows(who, unit)
    audit(Action.PATIENT_LIST, detail=f"web ward: {len(rows)} patients")
    return render_template("ward.html", rows=rows, unit=unit, units=_ward_units(reader, who), sort_task=SORT_TASK,
                           thresholds=thresholds(), tasks=sorted(TASKS))


@bp.get("/ward/table")
@page(Permission.PATIENT_READ, touch=False)
def ward_table() -> str:
    """The ward's rows alone, for the page's live refresh (not user activity)."""
    who = principal()
    rows = ward_rows(who, _unit_arg(who))
    audit(Action.PATIENT_LIST, detail=f"web ward refresh: {len(rows)} patients")
    return render_template("_ward_rows.html", rows=rows, sort_task=SORT_TASK)


# -- one patient --------------------------------------------------------------------------------------------

def _patient_or_404(uid: str) -> PatientRow:
    found = _reader().patient(uid)
    if found is None:
        raise NotFound("no such patient")
    return found


def _series(rows: Sequence[ObservationRow]) -> dict[str, list[TimePoint]]:
    out: dict[str, list[TimePoint]] = {}
    for r in rows:
        out.setdefault(r.variable, []).append((r.effective_at, float(r.value)))
    return out


def _unit_text(unit: str) -> str:
    return {"Cel": " °C", "mm[Hg]": " mmHg", "%": "%", "/min": "/min", "{score}": "", "{steps}": " steps",
            "10*3/uL": " ×10³/µL", "10*6/uL": " ×10⁶/µL"}.get(unit, f" {unit}")


def _charts(series: Mapping[str, list[TimePoint]], names: Iterable[str], start: datetime,
            end: datetime) -> list[dict[str, Any]]:
    variables = catalogue()
    out = []
    for name in names:
        points = series.get(name)
        if not points:
            continue
        var = variables.get(name)
        display = SHORT_NAMES.get(name) or (var.display if var is not None and len(var.display) <= 28
                                            else name.replace("_", " ").capitalize())
        unit = _unit_text(var.unit) if var is not None else ""
        normal = (var.normal_low, var.normal_high) if var is not None else None
        out.append({"name": name, "label": display, "latest": points[-1],
                    "unit": unit, "normal": normal,
                    "svg": time_chart(points, label=display, unit=unit, start=start, end=end, normal=normal)})
    return out


def risk_panel(patient: PatientRow) -> dict[str, Any]:
    """Current risk per task with its trajectory chart (threshold line), top factors and alerts."""
    engine = services().store.engine
    predictions = latest_predictions(engine, patient.id)
    limits = thresholds()
    tasks = []
    for task, p in sorted(predictions.items(), key=lambda kv: (kv[0] != SORT_TASK, kv[0])):
        points = [(x.data_time, x.risk) for x in risk_trajectory(engine, patient.id, task, p.data_time - TRAJECTORY,
                                                                  until=p.data_time)]
        description = TASKS[task].description if task in TASKS else task
        tasks.append({"task": task, "description": description, "prediction": p, "threshold": limits.get(task),
                      "chart": time_chart(points, label=f"Risk of {task.replace('_', ' ')}", percent=True,
                                          threshold=limits.get(task), y_min=0.0,
                                          y_max=min(1.0, max([v for _, v in points] + [limits.get(task, 0.3)]) * 1.2)),
                      "factors": [f for f in p.factors if isinstance(f, Mapping)][:5]})
    return {"tasks": tasks, "alerts": _alerts(predictions.values()), "reasons": alert_feedback.DISMISS_REASONS,
            "news2": next((p.news2 for p in predictions.values() if p.news2 is not None), None)}


def _break_glass_page(uid: str, error: str | None = None, status: int = 403) -> Response:
    html = render_template("break_glass.html", uid=uid, error=error, minutes=BREAK_GLASS_MINUTES)
    return Response(html, status=status, mimetype="text/html")


@bp.get("/patients/<uid>")
@page(Permission.PATIENT_READ)
def patient(uid: str) -> Any:
    who = principal()
    reader = _reader()
    row = _patient_or_404(uid)
    engine = services().store.engine
    if not can_see_patient(engine, who, row.id):
        deny("patient outside the caller's units", patient_uid=uid)  # the one audit row of this request
        return _break_glass_page(uid)
    encounters = reader.encounters(row.id)
    current = next((e for e in encounters if e.discharged_at is None), encounters[0] if encounters else None)
    anchor = reader.last_observation_times([row.id]).get(row.id) or datetime.now(UTC)
    start = anchor - CHART_WINDOW
    observations = reader.observations(row.id, since=start, until=anchor, limit=MAX_OBSERVATIONS, newest_first=False)
    bedside = [o for o in observations if o.source != "wearable"]
    worn = [o for o in observations if o.source == "wearable"]
    series = _series(bedside)
    labs = sorted(n for n, v in catalogue().items() if v.category == "laboratory" and n in series)
    studies = reader.imaging(row.id)
    show_text = who.can(Permission.PATIENT_DEMOGRAPHICS)
    imaging = [{"study": s, "reports": [{"report": r, "conclusion": reader.conclusion(r) if show_text else None}
                                        for r in s.reports]} for s in studies]
    worn_series = _series(worn)
    context = {
        "patient": _label(reader, row, who), "deceased_at": row.deceased_at, "encounter": current,
        "encounters": encounters, "conditions": reader.conditions(row.id), "panel": risk_panel(row),
        "vitals": _charts(series, VITALS, start, anchor), "labs": _charts(series, labs, start, anchor),
        "wearables": _charts(worn_series, sorted(worn_series), start, anchor), "imaging": imaging,
        "window_start": start, "window_end": anchor, "sort_task": SORT_TASK,
    }
    audit(Action.PATIENT_READ, patient_uid=uid, detail="web patient page")
    return render_template("patient.html", **context)


@bp.get("/patients/<uid>/risk")
@page(Permission.PATIENT_READ, touch=False)
def patient_risk(uid: str) -> Any:
    """The risk panel alone, for the page's live refresh (not user activity)."""
    row = _patient_or_404(uid)
    if not can_see_patient(services().store.engine, principal(), row.id):
        raise deny("patient outside the caller's units", patient_uid=uid)
    panel = risk_panel(row)
    audit(Action.PREDICTION_READ, patient_uid=uid, detail="web risk refresh")
    return render_template("_risk_panel.html", panel=panel, uid=uid)


@bp.post("/patients/<uid>/break-glass")
@page(Permission.PATIENT_READ)
def break_glass(uid: str) -> Any:
    row = _patient_or_404(uid)
    store = services().store
    try:
        minutes = int(request.form.get("minutes") or 60)
    except ValueError:
        minutes = 0
    if minutes not in BREAK_GLASS_MINUTES:
        return _break_glass_page(uid, "Choose how long you need access.", status=422)
    try:
        expires = open_break_glass(store.engine, store.keyring, principal(), row.id,
                                   request.form.get("reason") or "", minutes=minutes)
    except BreakGlassError as exc:
        audit(Action.BREAK_GLASS, "failed", patient_uid=uid, detail="refused: " + exc.public_message[:120])
        return _break_glass_page(uid, exc.public_message, status=422)
    audit(Action.BREAK_GLASS, patient_uid=uid, detail=f"web, {minutes} min until {expires:%H:%M}Z")
    return redirect(url_for("ui.patient", uid=uid))


@bp.post("/patients/<uid>/alerts/<int:prediction_id>")
@page(Permission.PATIENT_READ)
def alert_feedback_view(uid: str, prediction_id: int) -> Any:
    """Acknowledge an alert, or dismiss it with a reason (stored as feedback for monitoring)."""
    row = _patient_or_404(uid)
    store = services().store
    if not can_see_patient(store.engine, principal(), row.id):
        raise deny("patient outside the caller's units", patient_uid=uid)
    current = {p.id: p for p in latest_predictions(store.engine, row.id).values() if p.band == "high"}
    alert = current.get(prediction_id)
    if alert is None:
        raise NotFound("this alert is no longer current; reload the page")
    action = request.form.get("action")
    if action == "acknowledge":
        alert_feedback.record(store.engine, store.keyring, prediction_id=alert.id, task=alert.task,
                              outcome=alert_feedback.ACKNOWLEDGED)
        audit(UiAction.ALERT_ACKNOWLEDGE, patient_uid=uid, detail=alert.task)
        observe_feedback("ui", "acknowledged")
    elif action == "dismiss":
        reason = request.form.get("reason") or ""
        if reason not in alert_feedback.DISMISS_REASONS:
            raise Unprocessable("choose a reason to dismiss the alert",
                                fields=[FieldError("form", "reason", "one of the listed reasons")])
        alert_feedback.record(store.engine, store.keyring, prediction_id=alert.id, task=alert.task,
                              outcome=alert_feedback.DISMISSED, reason_code=reason,
                              comment=request.form.get("comment"))
        audit(UiAction.ALERT_DISMISS, patient_uid=uid, detail=f"{alert.task} reason={reason}")
        observe_feedback("ui", "dismissed")
    else:
        raise Unprocessable("unknown action", fields=[FieldError("form", "action", "acknowledge or dismiss")])
    return redirect(url_for("ui.patient", uid=uid) + "#alerts")


# -- live updates for the session -------------------------------------------------------------------------

class _SessionStream(_Stream):
    """The API's event stream for a browser session: ends when the session would be idle-logged-off (the
    browser reconnects with its current cookie), re-reads the user and their break-glass grants."""

    def __init__(self, svc: Services, hub: StreamHub, who: Principal, start_id: int, replay: bool,
                 ends_at: float) -> None:
        super().__init__(svc, hub, "", who, start_id, replay)
        self.ends_at = ends_at

    def _recheck(self) -> bool:
        if time.time() >= self.ends_at:
            return False
        try:
            who = principal_for(self.svc.store.engine, self.who.user_id, via=SESSION_SCHEME)
            if who is None or not who.can(Permission.PREDICTION_READ):
                return False
            self.who = who
            self.visibility = _visibility(self.svc, who)
        except Exception:  # the database is away for a moment: keep the last known filter
            return True
        return True


@bp.get("/stream")
@page(Permission.PREDICTION_READ, touch=False)
def stream() -> Response:
    svc, who, ends_at = services(), g.principal, time.time() + remaining_seconds()
    return open_event_stream(lambda hub, start, replay: _SessionStream(svc, hub, who, start, replay, ends_at),
                             label="web session")
