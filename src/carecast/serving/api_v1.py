"""API v1 (`/api/v1`): patients, observations, imaging, predictions, models and ingestion, as JSON.

Each view declares its permission (`@requires`) and its description (`@ops.get/post`, from which the
OpenAPI document is built). Every read of patient data and every write leaves exactly one audit row;
a refusal leaves exactly one "auth:denied" row instead. Patients are named by their public uid only.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import Engine

from carecast.crypto import Keyring
from carecast.domain.records import Rejection, UnitOfWork
from carecast.errors import NotFoundError
from carecast.ingest.dicom import decode_dicom
from carecast.ingest.fhir import decode_bundle, decode_ndjson
from carecast.ingest.wearable import decode_jsonl
from carecast.models.metrics import age_band
from carecast.models.tasks import TASKS
from carecast.monitoring.metrics import observe_ingest, observe_prediction
from carecast.scoring.predictor import FeatureError
from carecast.scoring.scorer import current_risks, latest_predictions, risk_trajectory
from carecast.security.access import can_see_patient, open_break_glass
from carecast.security.permissions import Permission, Principal
from carecast.serving.auth import Action, audit, deny, public, requires
from carecast.serving.context import principal, services
from carecast.serving.errors import BadRequest, FieldError, NotFound, ServiceUnavailable, Unprocessable
from carecast.serving.openapi import (
    JSON,
    Body,
    Operations,
    Param,
    build_spec,
    docs_page,
    dumps,
    json_body,
    query_args,
    raw_body,
)
from carecast.store.batches import FileSummary, ingest_units
from carecast.store.clinical import ClinicalReader, PatientRow, Stay
from carecast.store.writer import ClinicalWriter

bp = Blueprint("api_v1", __name__, url_prefix="/api/v1")
ops = Operations(bp)

API_TITLE = "CareCast API"
API_VERSION = "1.0.0"
FHIR_JSON = "application/fhir+json"
NDJSON_TYPES = ("application/x-ndjson", "application/fhir+ndjson")
MB = 1024 * 1024
MAX_INGEST_BYTES = 20 * MB  # also the app's MAX_CONTENT_LENGTH
MAX_WEARABLE_BYTES = 5 * MB
MAX_BATCH_ROWS = 1000
MAX_REJECTIONS_SHOWN = 1000
SORT_TASK = "deterioration_24h"  # the list is sorted by current deterioration risk
TOP_FACTORS = 5
DEFAULT_TRAJECTORY_DAYS = 7
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# FHIR risk-probability codes for the bands the scorer assigns.
_QUALITATIVE_RISK = {"low": "low", "medium": "moderate", "moderate": "moderate", "high": "high",
                     "very high": "high", "very_high": "high", "negligible": "negligible"}


# -- schemas (of the OpenAPI document and of request validation) ---------------------------------------------

_TIME = {"type": ["string", "null"], "format": "date-time"}
_RISK = {
    "type": "object",
    "properties": {"task": {"type": "string"}, "model_version": {"type": "string"}, "risk": {"type": "number"},
                   "band": {"type": "string"}, "news2": {"type": ["integer", "null"]},
                   "factors": {"type": "array", "items": {"type": "object"}}, "data_time": _TIME,
                   "computed_at": _TIME},
}
_DEMOGRAPHICS = {"type": "object", "properties": {
    "family_name": {"type": ["string", "null"]}, "given_names": {"type": ["string", "null"]},
    "mrn": {"type": ["string", "null"]}, "birth_date": {"type": ["string", "null"], "format": "date"}}}
_PATIENT_SUMMARY = {
    "type": "object", "required": ["uid", "sex", "age_band"],
    "properties": {"uid": {"type": "string"}, "sex": {"type": "string"}, "age_band": {"type": "string"},
                   "unit": {"type": ["string", "null"]}, "bed": {"type": ["string", "null"]},
                   "admitted_at": _TIME, "news2": {"type": ["integer", "null"]},
                   "risks": {"type": "object", "additionalProperties": _RISK},
                   "demographics": _DEMOGRAPHICS},
}
_FEATURES = {"type": "object", "maxProperties": 5000,
             "additionalProperties": {"type": ["number", "string", "boolean", "null"]}}
_SCORED = {"type": "object", "properties": {
    "task": {"type": "string"}, "model_version": {"type": "string"}, "risk": {"type": "number"},
    "band": {"type": "string"}, "threshold": {"type": ["number", "null"]},
    "factors": {"type": "array", "items": {"type": "object"}}}}
_INGEST_RESULT = {"type": "object", "properties": {
    "batch": {"type": "integer"}, "status": {"type": "string"}, "inserted": {"type": "integer"},
    "updated": {"type": "integer"}, "unchanged": {"type": "integer"}, "rejected": {"type": "integer"},
    "skipped": {"type": "integer"}, "rejections_truncated": {"type": "integer"},
    "rejections": {"type": "array", "items": {"type": "object", "properties": {
        "where": {"type": "string"}, "field": {"type": ["string", "null"]}, "reason": {"type": "string"}}}}}}
_MODEL_SUMMARY = {"type": "object", "properties": {
    "task": {"type": "string"}, "description": {"type": "string"}, "serving_version": {"type": ["string", "null"]},
    "champion": {"type": ["object", "null"]}, "challenger": {"type": ["object", "null"]}}}
_LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Page size")
_OFFSET = Param("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0}, "Rows to skip")


# -- small helpers ----------------------------------------------------------------------------------------------

def _iso(value: datetime | date | None) -> str | None:
    return None if value is None else value.isoformat()


def _engine() -> Engine:
    return services().store.engine


def _keyring() -> Keyring:
    return services().store.keyring


def _reader() -> ClinicalReader:
    return ClinicalReader(_engine(), _keyring())


def _age_band(patient: PatientRow) -> str:
    years = _reader().age(patient)
    return "unknown" if years is None else str(age_band([years])[0])


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def _factor(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "_asdict"):
        return dict(value._asdict())
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _factors(value: Any, limit: int = TOP_FACTORS) -> list[Any]:
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return []
    return [_factor(f) for f in list(value or [])[:limit]]


def _prediction(p: Any) -> dict[str, Any]:
    return {"task": _attr(p, "task"), "model_version": _attr(p, "model_version"), "risk": _attr(p, "risk"),
            "band": _attr(p, "band"), "news2": _attr(p, "news2"), "factors": _factors(_attr(p, "factors")),
            "data_time": _iso(_attr(p, "data_time")), "computed_at": _iso(_attr(p, "computed_at"))}


def _news2(predictions: Mapping[str, Any]) -> int | None:
    preferred = predictions.get(SORT_TASK)
    for p in ([preferred] if preferred is not None else []) + list(predictions.values()):
        value = _attr(p, "news2")
        if value is not None:
            return int(value)
    return None


def _safe_name(name: object) -> str:
    return name if isinstance(name, str) and _SAFE_NAME.fullmatch(name) else "(unprintable name)"


# -- patients: lookup and visibility ------------------------------------------------------------------------------

def _patient_row(uid: str) -> PatientRow:
    row = _reader().patient(uid)
    if row is None:
        raise NotFound("no such patient")
    return row


def _visible_patient(uid: str) -> PatientRow:
    """The patient with this uid if the caller may see it: 404 if unknown, 403 (audited) if not visible."""
    row = _patient_row(uid)
    if not can_see_patient(_engine(), principal(), row.id):
        raise deny("patient outside the caller's units", patient_uid=uid)
    return row


def _current_stays(who: Principal, unit: str | None) -> list[Stay]:
    """The open encounter of each in-house patient the caller may list (latest admission first wins)."""
    return _reader().current_stays(unit=unit, units=who.units if who.unit_restricted else None)


# -- public: the API description -------------------------------------------------------------------------------

@ops.get("/openapi.json", summary="This API's OpenAPI 3.1 description", tag="meta", response={"type": "object"})
@public
def openapi_json() -> Response:
    spec = build_spec(current_app, bp.name, title=API_TITLE, version=API_VERSION)
    return Response(dumps(spec), mimetype=JSON)


@ops.get("/docs", summary="A page listing the operations of this API", tag="meta", response_type="text/html",
         response={"type": "string"})
@public
def docs() -> Response:
    spec = build_spec(current_app, bp.name, title=API_TITLE, version=API_VERSION)
    return Response(docs_page(spec), mimetype="text/html")


# -- patients -----------------------------------------------------------------------------------------------------

@ops.get("/patients", summary="In-house patients the caller may see, highest deterioration risk first",
         tag="patients", query=(Param("unit", {"type": "string", "maxLength": 64}, "Only this unit"), _LIMIT, _OFFSET),
         description="Clinicians and nurses see the patients of their units. Names, MRN and birth date appear "
                     "only with `patient:demographics`.",
         response={"type": "object", "properties": {
             "patients": {"type": "array", "items": _PATIENT_SUMMARY}, "total": {"type": "integer"},
             "limit": {"type": "integer"}, "offset": {"type": "integer"}}})
@requires(Permission.PATIENT_READ)
def list_patients() -> Response:
    args = query_args()
    who = principal()
    stays = _current_stays(who, args["unit"])
    engine = _engine()
    ids = [s.patient.id for s in stays]
    latest: dict[int, dict[str, Any]] = {pid: {} for pid in ids}
    if ids:
        for task in TASKS:
            for pid, p in current_risks(engine, task, ids).items():
                latest[pid][task] = p

    def order(stay: Stay) -> tuple[float, str]:
        p = latest[stay.patient.id].get(SORT_TASK)
        return (-float(p.risk) if p is not None else 1.0, stay.patient.uid)

    stays.sort(key=order)
    page = stays[args["offset"]: args["offset"] + args["limit"]]
    show_names = who.can(Permission.PATIENT_DEMOGRAPHICS)
    items = []
    reader = _reader()
    for s in page:
        predictions = latest[s.patient.id]
        item: dict[str, Any] = {
            "uid": s.patient.uid, "sex": s.patient.sex, "age_band": _age_band(s.patient), "unit": s.unit,
            "bed": s.bed, "admitted_at": _iso(s.admitted_at), "news2": _news2(predictions),
            "risks": {task: _prediction(p) for task, p in sorted(predictions.items())}}
        if show_names:
            item["demographics"] = reader.demographics(s.patient)
        items.append(item)
    audit(Action.PATIENT_LIST, detail=f"{len(items)} of {len(stays)} patients")
    return jsonify({"patients": items, "total": len(stays), "limit": args["limit"], "offset": args["offset"]})


@ops.get("/patients/<uid>", summary="One patient: stays, conditions and latest risks", tag="patients",
         response={"type": "object", "properties": {
             "uid": {"type": "string"}, "sex": {"type": "string"}, "age_band": {"type": "string"},
             "deceased_at": _TIME, "encounters": {"type": "array", "items": {"type": "object"}},
             "conditions": {"type": "array", "items": {"type": "object"}},
             "predictions": {"type": "array", "items": _RISK}, "news2": {"type": ["integer", "null"]},
             "demographics": _DEMOGRAPHICS}})
@requires(Permission.PATIENT_READ)
def patient_detail(uid: str) -> Response:
    row = _visible_patient(uid)
    pid = row.id
    reader = _reader()
    encounters = reader.encounters(pid)
    conditions = reader.conditions(pid)
    predictions = latest_predictions(_engine(), pid)
    body: dict[str, Any] = {
        "uid": row.uid, "sex": row.sex, "age_band": _age_band(row),
        "deceased_at": _iso(row.deceased_at),
        "encounters": [{"uid": x.uid, "status": x.status, "class": x.encounter_class,
                        "admission_type": x.admission_type, "admitted_at": _iso(x.admitted_at),
                        "discharged_at": _iso(x.discharged_at), "unit": x.unit, "bed": x.bed,
                        "disposition": x.disposition} for x in encounters],
        "conditions": [{"system": x.system, "code": x.code, "display": x.display, "onset_at": _iso(x.onset_at),
                        "recorded_at": _iso(x.recorded_at), "clinical_status": x.clinical_status}
                       for x in conditions],
        "predictions": [_prediction(p) for _, p in sorted(predictions.items())],
        "news2": _news2(predictions),
    }
    if principal().can(Permission.PATIENT_DEMOGRAPHICS):
        body["demographics"] = reader.demographics(row)
    audit(Action.PATIENT_READ, patient_uid=uid)
    return jsonify(body)


@ops.get("/patients/<uid>/observations", summary="A patient's observations, newest first", tag="patients",
         query=(Param("variable", {"type": "string", "maxLength": 32}, "Only this variable, e.g. heart_rate"),
                Param("since", {"type": "string", "format": "date-time"}, "Only from this time on (ISO 8601)"),
                Param("limit", {"type": "integer", "minimum": 1, "maximum": 5000, "default": 1000}, "At most")),
         response={"type": "object", "properties": {"uid": {"type": "string"}, "observations": {
             "type": "array", "items": {"type": "object", "properties": {
                 "variable": {"type": "string"}, "value": {"type": "number"}, "unit": {"type": "string"},
                 "effective_at": _TIME, "category": {"type": "string"}, "source": {"type": "string"},
                 "code": {"type": "string"}}}}}})
@requires(Permission.PATIENT_READ)
def patient_observations(uid: str) -> Response:
    args = query_args()
    row = _visible_patient(uid)
    rows = _reader().observations(row.id, variables=[args["variable"]] if args["variable"] else None,
                                  since=args["since"], limit=args["limit"])
    audit(Action.OBSERVATIONS_READ, patient_uid=uid)
    return jsonify({"uid": uid, "observations": [
        {"variable": r.variable, "value": r.value, "unit": r.unit, "effective_at": _iso(r.effective_at),
         "category": r.category, "source": r.source, "system": r.system, "code": r.code} for r in rows]})


@ops.get("/patients/<uid>/imaging", summary="A patient's imaging studies with series and report codes",
         tag="patients", description="Report conclusions (free text) appear only with `patient:demographics`, "
                                     "since free text can carry identifiers.",
         response={"type": "object", "properties": {"uid": {"type": "string"},
                                                    "studies": {"type": "array", "items": {"type": "object"}}}})
@requires(Permission.PATIENT_READ)
def patient_imaging(uid: str) -> Response:
    row = _visible_patient(uid)
    reader = _reader()
    studies = reader.imaging(row.id)
    show_text = principal().can(Permission.PATIENT_DEMOGRAPHICS)
    out = []
    for s in studies:
        out.append({
            "uid": s.uid, "started_at": _iso(s.started_at), "modality": s.modality, "body_site": s.body_site,
            "description": s.description, "source": s.source,
            "series": [{"modality": x.modality, "body_site": x.body_site, "description": x.description,
                        "number": x.number, "instances": x.instances} for x in s.series],
            "reports": [{"category": r.category, "code": r.code, "issued_at": _iso(r.issued_at),
                         "finding_codes": r.finding_codes,
                         **({"conclusion": reader.conclusion(r)} if show_text else {})}
                        for r in s.reports],
        })
    audit(Action.IMAGING_READ, patient_uid=uid)
    return jsonify({"uid": uid, "studies": out})


@ops.get("/patients/<uid>/predictions", summary="Latest risk per task with band, NEWS2, top factors, model version",
         tag="predictions", response={"type": "object", "properties": {
             "uid": {"type": "string"}, "news2": {"type": ["integer", "null"]},
             "predictions": {"type": "array", "items": _RISK}}})
@requires(Permission.PREDICTION_READ)
def patient_predictions(uid: str) -> Response:
    row = _visible_patient(uid)
    predictions = latest_predictions(_engine(), row.id)
    audit(Action.PREDICTION_READ, patient_uid=uid)
    return jsonify({"uid": uid, "news2": _news2(predictions),
                    "predictions": [_prediction(p) for _, p in sorted(predictions.items())]})


@ops.get("/patients/<uid>/predictions/<task>/trajectory", summary="A patient's risk over time for one task",
         tag="predictions", query=(Param("since", {"type": "string", "format": "date-time"},
                                         f"From this time on (default: the last {DEFAULT_TRAJECTORY_DAYS} days)"),),
         response={"type": "object", "properties": {
             "uid": {"type": "string"}, "task": {"type": "string"}, "since": _TIME,
             "points": {"type": "array", "items": _RISK}}})
@requires(Permission.PREDICTION_READ)
def patient_trajectory(uid: str, task: str) -> Response:
    args = query_args()
    if task not in TASKS:
        raise NotFound("no such task")
    row = _visible_patient(uid)
    since = args["since"] or datetime.now(UTC) - timedelta(days=DEFAULT_TRAJECTORY_DAYS)
    points = risk_trajectory(_engine(), row.id, task, since)
    audit(Action.TRAJECTORY_READ, patient_uid=uid, detail=task)
    return jsonify({"uid": uid, "task": task, "since": _iso(since),
                    "points": [_trajectory_point(p, task) for p in points]})


def _trajectory_point(p: Any, task: str) -> dict[str, Any]:
    if isinstance(p, tuple) and not hasattr(p, "_asdict"):
        keys = ("data_time", "risk", "band", "model_version")
        p = dict(zip(keys, p, strict=False))
    point = _prediction(p)
    point["task"] = point["task"] or task
    return point


def _risk_assessment(uid: str, p: Any) -> dict[str, Any]:
    task = str(_attr(p, "task"))
    version = str(_attr(p, "model_version"))
    band = str(_attr(p, "band"))
    when = _iso(_attr(p, "data_time"))
    factors = _factors(_attr(p, "factors"))
    names = [str(_attr(f, "feature") or _attr(f, "name") or f) for f in factors]
    rid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:carecast:risk:{uid}:{task}:{version}:{when}"))
    qualitative: dict[str, Any] = {"text": band}
    code = _QUALITATIVE_RISK.get(band.lower())
    if code:
        qualitative["coding"] = [{"system": "http://terminology.hl7.org/CodeSystem/risk-probability", "code": code}]
    description = TASKS[task].description if task in TASKS else task
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment", "id": rid, "status": "final",
        "subject": {"reference": f"Patient/{uid}"},
        "occurrenceDateTime": when,
        "method": {"coding": [{"system": "urn:carecast:model", "code": f"{task}/{version}"}],
                   "text": f"CareCast {task} model version {version}"},
        "prediction": [{"outcome": {"text": description}, "probabilityDecimal": float(_attr(p, "risk")),
                        "qualitativeRisk": qualitative}],
    }
    if names:
        resource["note"] = [{"text": "Top contributing factors: " + ", ".join(names)}]
    news2 = _attr(p, "news2")
    if news2 is not None:
        resource.setdefault("note", []).append({"text": f"NEWS2 {int(news2)}"})
    return resource


@ops.get("/patients/<uid>/risk-assessment", summary="Latest risks as FHIR R4 RiskAssessment resources (a Bundle)",
         tag="predictions", response_type=FHIR_JSON,
         response={"type": "object", "properties": {"resourceType": {"const": "Bundle"}, "type": {"type": "string"},
                                                    "entry": {"type": "array", "items": {"type": "object"}}}})
@requires(Permission.PREDICTION_READ)
def patient_risk_assessment(uid: str) -> Response:
    row = _visible_patient(uid)
    predictions = latest_predictions(_engine(), row.id)
    resources = [_risk_assessment(uid, p) for _, p in sorted(predictions.items())]
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
              "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "search": {"mode": "match"}}
                        for r in resources]}
    audit(Action.RISK_ASSESSMENT_READ, patient_uid=uid)
    return Response(orjson.dumps(bundle), mimetype=FHIR_JSON)


@ops.post("/patients/<uid>/break-glass", summary="Emergency access to a patient outside the caller's units",
          tag="patients", status=201,
          description="Reason required (at least 10 characters); the grant is time-limited, kept encrypted and "
                      "audited.",
          body=Body(schema={"type": "object", "required": ["reason"], "additionalProperties": False,
                            "properties": {"reason": {"type": "string", "minLength": 10, "maxLength": 1000},
                                           "minutes": {"type": "integer", "minimum": 1, "maximum": 720}}}),
          response={"type": "object", "properties": {"uid": {"type": "string"}, "expires_at": _TIME}})
@requires(Permission.PATIENT_READ)
def break_glass(uid: str) -> tuple[Response, int]:
    body = json_body()
    row = _patient_row(uid)
    minutes = int(body.get("minutes") or 60)
    expires = open_break_glass(_engine(), _keyring(), principal(), row.id, body["reason"], minutes=minutes)
    audit(Action.BREAK_GLASS, patient_uid=uid, detail=f"{minutes} min")
    return jsonify({"uid": uid, "expires_at": _iso(expires)}), 201


# -- scoring a feature payload ------------------------------------------------------------------------------------

def _known_features(task: str) -> frozenset[str]:
    """The features the task's champion reads."""
    return services().predictor.feature_set(task)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise Unprocessable("unknown task", fields=[FieldError("body", "task", "not a known task: "
                                                              + ", ".join(sorted(TASKS)))])
    predictor = services().predictor
    predictor.maybe_refresh()
    if not predictor.ready or task not in predictor.versions():
        raise ServiceUnavailable("no model is loaded for this task")


def _unknown_features(rows: Iterable[tuple[str, Mapping[str, Any]]], known: frozenset[str]) -> list[FieldError]:
    problems: list[FieldError] = []
    for where, row in rows:
        if row.keys() <= known:  # the common case, one set comparison
            continue
        for name in row:
            if name not in known:
                problems.append(FieldError(where, _safe_name(name), "unknown feature"))
                if len(problems) >= 100:
                    return problems
    return problems


def _score(task: str, row: Mapping[str, Any], where: str) -> Any:
    """One row scored; a model gone since the check is a 503, a row it cannot read a 422 naming where."""
    try:
        result = services().predictor.predict(task, row, fill_missing=True)
    except FeatureError as exc:
        raise Unprocessable("a feature row cannot be scored",
                            fields=[FieldError(where, None, exc.public_message)]) from None
    except NotFoundError:
        raise ServiceUnavailable("no model is loaded for this task") from None
    observe_prediction(task, str(_attr(result, "model_version")), float(_attr(result, "risk")), source="api")
    return result


def _scored(result: Any) -> dict[str, Any]:
    return {"task": _attr(result, "task"), "model_version": _attr(result, "model_version"),
            "risk": float(_attr(result, "risk")), "band": _attr(result, "band"),
            "threshold": _attr(result, "threshold"), "factors": _factors(_attr(result, "factors"))}


@ops.post("/predict", summary="Score one feature row", tag="predictions",
          description="Features not given count as missing; a name the model does not know is refused (422).",
          body=Body(schema={"type": "object", "required": ["task", "features"], "additionalProperties": False,
                            "properties": {"task": {"type": "string", "maxLength": 64}, "features": _FEATURES}}),
          response=_SCORED)
@requires(Permission.PREDICTION_CREATE)
def predict() -> Response:
    body = json_body()
    task = body["task"]
    _check_task(task)
    problems = _unknown_features([("features", body["features"])], _known_features(task))
    if problems:
        raise Unprocessable("unknown feature names", fields=problems)
    result = _score(task, body["features"], "features")
    audit(Action.PREDICTION_CREATE, detail=task)
    return jsonify(_scored(result))


@ops.post("/predict/batch", summary=f"Score up to {MAX_BATCH_ROWS} feature rows", tag="predictions",
          body=Body(max_bytes=10 * MB, schema={
              "type": "object", "required": ["task", "rows"], "additionalProperties": False,
              "properties": {"task": {"type": "string", "maxLength": 64},
                             "rows": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_ROWS,
                                      "items": _FEATURES}}}),
          response={"type": "object", "properties": {"task": {"type": "string"}, "predictions": {
              "type": "array", "items": _SCORED}}})
@requires(Permission.PREDICTION_CREATE)
def predict_batch() -> Response:
    body = json_body()
    task = body["task"]
    _check_task(task)
    rows = body["rows"]
    problems = _unknown_features([(f"rows[{i}]", r) for i, r in enumerate(rows)], _known_features(task))
    if problems:
        raise Unprocessable("unknown feature names", fields=problems)
    results = [_scored(_score(task, r, f"rows[{i}]")) for i, r in enumerate(rows)]
    audit(Action.PREDICTION_BATCH, detail=f"{task} rows={len(rows)}")
    return jsonify({"task": task, "predictions": results})


# -- models -------------------------------------------------------------------------------------------------------

# Card sections that describe training data in bulk (reference distributions for drift) stay out of the API.
_CARD_HIDDEN = frozenset({"reference"})


def _card_summary(card: Mapping[str, Any]) -> dict[str, Any]:
    summary = {k: v for k, v in card.items() if k not in _CARD_HIDDEN}
    schema = summary.get("feature_schema")
    if isinstance(schema, Mapping):
        summary["feature_schema"] = {"hash": schema.get("hash"), "spec_version": schema.get("spec_version"),
                                     "n_columns": len(schema.get("columns") or [])}
    return summary


def _alias_card(task: str, alias: str) -> dict[str, Any] | None:
    registry = services().registry
    if registry is None:
        return None
    aliases = registry.aliases(task)
    version = aliases.get(alias)
    if not version:
        return None
    return {"version": version, "card": _card_summary(registry.card(task, version))}


def _model_info(task: str) -> dict[str, Any]:
    serving = services().predictor.versions()
    version = serving.get(task) if isinstance(serving, Mapping) else None
    return {"task": task, "description": TASKS[task].description,
            "serving_version": version if isinstance(version, str) or version is None else str(version),
            "champion": _alias_card(task, "champion"), "challenger": _alias_card(task, "challenger")}


@ops.get("/models", summary="Champion and challenger model of every task", tag="models",
         response={"type": "object", "properties": {"models": {"type": "array", "items": _MODEL_SUMMARY}}})
@requires(Permission.MODEL_READ)
def list_models() -> Response:
    return jsonify({"models": [_model_info(task) for task in sorted(TASKS)]})


@ops.get("/models/<task>", summary="One task's models, their cards and promotion history", tag="models",
         response=_MODEL_SUMMARY)
@requires(Permission.MODEL_READ)
def model_detail(task: str) -> Response:
    if task not in TASKS:
        raise NotFound("no such task")
    info = _model_info(task)
    registry = services().registry
    info["history"] = registry.aliases(task).get("history", []) if registry is not None else []
    return jsonify(info)


# -- ingestion ----------------------------------------------------------------------------------------------------

@dataclass
class _Ingested:
    summary: FileSummary
    patients: set[int] = field(default_factory=set)  # patients with new or changed readings
    latest: datetime | None = None  # the latest of those readings

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        shown = s.examples[:MAX_REJECTIONS_SHOWN]
        return {"batch": s.batch_id, "status": s.status, "inserted": s.inserted, "updated": s.updated,
                "unchanged": s.unchanged, "rejected": s.rejected, "skipped": s.skipped,
                "rejections": [_rejection(r).to_dict() for r in shown],
                "rejections_truncated": s.rejected - len(shown)}


def _rejection(r: Rejection) -> FieldError:
    return FieldError(r.where, r.field, r.reason)


def _write(units: Iterable[UnitOfWork], *, source: str, label: str) -> _Ingested:
    """Write units as one ingest batch with the store's batch rules (the same as `carecast ingest`).

    The writer reports patients whose readings changed after each commit; they are collected here and
    handed to the scoring queue once the batch is finished (see _finish_ingest)."""
    store = services().store
    changed: dict[int, datetime | None] = {}

    def note(patient_ids: set[int], latest: datetime | None) -> None:
        for pid in patient_ids:
            before = changed.get(pid)
            changed[pid] = latest if before is None or (latest is not None and latest > before) else before

    writer = ClinicalWriter(store.engine, store.keyring, on_patients_changed=note)
    summary = ingest_units(units, writer, source=source, label=label)
    times = [t for t in changed.values() if t is not None]
    return _Ingested(summary=summary, patients=set(changed), latest=max(times) if times else None)


def _finish_ingest(action: str, done: _Ingested) -> Response:
    """Audit the write, hand changed patients to the scoring queue, answer (422 if nothing was stored)."""
    s = done.summary
    nothing = s.nothing_stored
    observe_ingest(action.split(":")[-1], s.inserted + s.updated + s.unchanged, s.rejected)
    detail = (f"batch={s.batch_id} inserted={s.inserted} updated={s.updated} unchanged={s.unchanged} "
              f"rejected={s.rejected} skipped={s.skipped}")
    audit(action, "failed" if nothing else "success", detail=detail)
    queue = services().queue
    if queue is not None and done.patients:
        queue.enqueue(sorted(done.patients), done.latest)
    if nothing:
        raise Unprocessable(f"nothing was stored: every record was rejected (batch {s.batch_id})",
                            fields=[_rejection(r) for r in s.examples[:MAX_REJECTIONS_SHOWN]])
    return jsonify(done.to_dict())


@contextlib.contextmanager
def _spooled(data: bytes, name: str) -> Iterator[Path]:
    """The body as a private temporary file (mode 0600 in a 0700 directory) for the file decoders;
    removed as soon as the request is done."""
    with tempfile.TemporaryDirectory(prefix="carecast-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        path.chmod(0o600)
        yield path


def _non_empty(data: bytes) -> bytes:
    if not data.strip():
        raise BadRequest("the body is empty", fields=[FieldError("body", "(body)", "empty")])
    return data


@ops.post("/ingest/fhir", summary="Ingest a FHIR R4 Bundle", tag="ingest",
          description="A `transaction` bundle is stored all or nothing; `batch`, `collection` and `searchset` "
                      "entry by entry. Rejected entries are quarantined and listed by entry and field. "
                      "Re-sending the same data changes nothing.",
          body=Body(content_types=(FHIR_JSON, JSON), max_bytes=MAX_INGEST_BYTES,
                    schema={"type": "object", "required": ["resourceType"],
                            "properties": {"resourceType": {"type": "string", "enum": ["Bundle"]},
                                           "type": {"type": "string"},
                                           "entry": {"type": "array", "items": {"type": "object"}}}}),
          response=_INGEST_RESULT)
@requires(Permission.INGEST_WRITE)
def ingest_fhir() -> Response:
    doc = json_body()
    return _finish_ingest(Action.INGEST_FHIR, _write([decode_bundle(doc, "bundle")], source="fhir",
                                                     label="api: FHIR bundle"))


@ops.post("/ingest/ndjson", summary="Ingest FHIR R4 resources as NDJSON (one per line)", tag="ingest",
          description="Stored line by line; rejected lines are quarantined and listed by line and field.",
          body=Body(content_types=NDJSON_TYPES, max_bytes=MAX_INGEST_BYTES), response=_INGEST_RESULT)
@requires(Permission.INGEST_WRITE)
def ingest_ndjson() -> Response:
    data = _non_empty(raw_body())
    chunk = services().settings.ingest_chunk
    with _spooled(data, "upload.ndjson") as path:
        done = _write(decode_ndjson(path, chunk, label="upload.ndjson"), source="fhir", label="api: FHIR NDJSON")
    return _finish_ingest(Action.INGEST_NDJSON, done)


@ops.post("/ingest/wearables", summary="Ingest wearable readings (NDJSON, one reading per line)", tag="ingest",
          description='Each line: `{"device_id", "patient", "type", "value", "unit", "time"}`. The same reading '
                      "sent twice is stored once.",
          body=Body(content_types=("application/x-ndjson",), max_bytes=MAX_WEARABLE_BYTES), response=_INGEST_RESULT)
@requires(Permission.INGEST_WRITE)
def ingest_wearables() -> Response:
    data = _non_empty(raw_body())
    chunk = services().settings.ingest_chunk
    with _spooled(data, "readings.jsonl") as path:
        done = _write(decode_jsonl(path, chunk, label="readings.jsonl"), source="wearable",
                      label="api: wearable readings")
    return _finish_ingest(Action.INGEST_WEARABLES, done)


@ops.post("/ingest/dicom", summary="Ingest one DICOM Part 10 file", tag="ingest",
          description="Only the header is read; the study is linked to its patient by MRN (PatientID).",
          body=Body(content_types=("application/dicom",), max_bytes=MAX_INGEST_BYTES), response=_INGEST_RESULT)
@requires(Permission.INGEST_WRITE)
def ingest_dicom() -> Response:
    data = _non_empty(raw_body())
    with _spooled(data, "upload.dcm") as path:
        done = _write(decode_dicom([path]), source="dicom", label="api: DICOM file")
    return _finish_ingest(Action.INGEST_DICOM, done)
