"""CDS Hooks (`/cds-services`): discovery, the `patient-view` service `carecast-deterioration` and its feedback.

The service answers with one card: the patient's deterioration risk, band, top factors in clinical words,
NEWS2 and model version. With a prefetch it decodes the FHIR resources it was sent and scores them in
memory, so it can score a patient it has never stored and writes nothing; without one it reads the stored
patient's latest risk. Callers are EHRs authenticated by their signed JWTs (`carecast.security.cds_jwt`), not
API tokens. Every authenticated call leaves exactly one audit row (a refused one exactly one "auth:failed"
row); no patient value reaches a log line, an error or the audit trail.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pandas as pd
from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy import insert, select

from carecast.domain.frames import ClinicalFrames
from carecast.domain.records import (
    ConditionRecord,
    DiagnosticReportRecord,
    EncounterRecord,
    ObservationRecord,
    PatientRecord,
    Record,
)
from carecast.errors import NotFoundError
from carecast.ingest.common import FieldProblem
from carecast.ingest.fhir import BUNDLE_TYPES_ENTRYWISE, decode_bundle, decode_resource
from carecast.models.tasks import TASKS
from carecast.monitoring.metrics import observe_feedback, observe_prediction
from carecast.scoring.scorer import latest_bedside_time, latest_predictions, score_frames
from carecast.security.cds_jwt import CdsAuthError, VerifiedToken, verify_token
from carecast.serving.auth import Action, authenticated_by, public, throttle
from carecast.serving.context import request_id, services, source_ip
from carecast.serving.errors import ApiError, BadRequest, FieldError, NotFound, ServiceUnavailable, Unauthorized
from carecast.serving.openapi import Body, Operations, json_body
from carecast.store import schema as S
from carecast.store.frames import load_frames

if TYPE_CHECKING:
    from carecast.scoring.predictor import Predictor

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("cds_hooks", __name__, url_prefix="/cds-services")
ops = Operations(bp)

AUTH_SCHEME = "cds-jwt"
MB = 1024 * 1024
MAX_CALL_BYTES = 5 * MB  # a prefetch of a few hundred resources
MAX_FEEDBACK_BYTES = 1 * MB
MAX_TOKEN_LENGTH = 16_384
TOP_FACTORS = 5
SUMMARY_LIMIT = 139  # CDS Hooks: fewer than 140 characters
SYNTHETIC_PATIENT_ID = 1  # a prefetch patient is scored in memory under this id
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_SAFE_USER = re.compile(r"[A-Za-z0-9\-._:/]{1,64}")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|])")
_INDICATOR = {"high": "critical", "medium": "warning", "low": "info"}
OVERRIDE_REASON_SYSTEM = "urn:carecast:cds:override-reason"
OVERRIDE_REASONS = (
    ("already-aware", "Already aware of the patient's condition"),
    ("not-clinically-relevant", "Not clinically relevant for this patient"),
    ("data-incomplete", "The recorded data is incomplete or wrong"),
    ("other", "Other reason"),
)


@dataclass(frozen=True)
class CdsService:
    """A CDS service as discovery describes it, and the outcome task it scores."""

    id: str
    hook: str
    title: str
    description: str
    task: str
    prefetch: dict[str, str] = field(default_factory=dict)

    def discovery(self) -> dict[str, Any]:
        return {"hook": self.hook, "id": self.id, "title": self.title, "description": self.description,
                "prefetch": dict(self.prefetch)}


DETERIORATION = CdsService(
    id="carecast-deterioration", hook="patient-view", title="CareCast deterioration risk",
    description="The patient's calibrated risk of ICU transfer or death within 24 hours, with its band, the "
                "factors that raised it most, NEWS2 and the model version.",
    task="deterioration_24h",
    prefetch={
        "patient": "Patient/{{context.patientId}}",
        "encounters": "Encounter?patient={{context.patientId}}&status=in-progress",
        "vitals": "Observation?patient={{context.patientId}}&category=vital-signs&_sort=-date&_count=100",
        "labs": "Observation?patient={{context.patientId}}&category=laboratory&_sort=-date&_count=100",
        "conditions": "Condition?patient={{context.patientId}}",
    },
)
SERVICES: dict[str, CdsService] = {DETERIORATION.id: DETERIORATION}


class PreconditionFailed(ApiError):
    """CDS Hooks' answer when the service cannot obtain the data it needs (no prefetch, patient unknown)."""

    http_status = 412
    code = "precondition_failed"


# -- request schemas (validated; failures name the field, never the value) ----------------------------------------

_CALL_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["hook", "hookInstance", "context"],
    "properties": {
        "hook": {"type": "string", "maxLength": 64},
        "hookInstance": {"type": "string", "maxLength": 64},
        "fhirServer": {"type": ["string", "null"], "maxLength": 2048},
        "fhirAuthorization": {"type": ["object", "null"]},  # never used: CareCast does not call the EHR back
        "context": {"type": "object", "required": ["userId", "patientId"], "properties": {
            "userId": {"type": "string", "maxLength": 256},
            "patientId": {"type": "string", "maxLength": 64},
            "encounterId": {"type": ["string", "null"], "maxLength": 64}}},
        "prefetch": {"type": ["object", "null"], "maxProperties": 20,
                     "additionalProperties": {"type": ["object", "null"]}},
    },
}
_CODING = {"type": "object", "properties": {"system": {"type": "string", "maxLength": 255},
                                            "code": {"type": "string", "maxLength": 64},
                                            "display": {"type": "string", "maxLength": 255}}}
_OVERRIDE_REASON = {"type": "object", "properties": {"reason": _CODING,
                                                     "userComment": {"type": "string", "maxLength": 2000}}}
_FEEDBACK_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["feedback"],
    "properties": {"feedback": {"type": "array", "minItems": 1, "maxItems": 100, "items": {
        "type": "object", "required": ["card", "outcome", "outcomeTimestamp"],
        "properties": {
            "card": {"type": "string", "maxLength": 64},
            "outcome": {"type": "string", "enum": ["accepted", "overridden"]},
            "acceptedSuggestions": {"type": "array", "maxItems": 50, "items": {"type": "object"}},
            "overrideReason": _OVERRIDE_REASON,  # CDS Hooks 2.0: one reason
            "overrideReasons": {"type": "array", "maxItems": 10, "items": _OVERRIDE_REASON},
            "outcomeTimestamp": {"type": "string", "maxLength": 64},
        }}}},
}
_CARD = {"type": "object", "properties": {
    "uuid": {"type": "string"}, "summary": {"type": "string"}, "detail": {"type": "string"},
    "indicator": {"type": "string", "enum": ["info", "warning", "critical"]},
    "source": {"type": "object"}, "links": {"type": "array", "items": {"type": "object"}},
    "overrideReasons": {"type": "array", "items": {"type": "object"}}}}


# -- authentication -----------------------------------------------------------------------------------------------

def _client_name(client_id: int | None) -> str | None:
    return None if client_id is None else f"cds-client:{client_id}"


def _audit(action: str, outcome: str, *, client_id: int | None, patient_uid: str | None = None,
           detail: str | None = None) -> None:
    """One audit row: the EHR client (by registration id) is the actor; tags and ids only, never values."""
    services().audit.record(action=action, outcome=outcome, username=_client_name(client_id),
                            patient_uid=patient_uid, source_ip=source_ip(), request_id=request_id(), detail=detail)


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not 0 < len(token) <= MAX_TOKEN_LENGTH:
        return None
    return token


def _service(service_id: str) -> CdsService:
    found = SERVICES.get(service_id)
    if found is None:
        raise NotFound("no such CDS service")
    return found


def cds_jwt_required(view: F) -> F:
    """Guard a CDS Hooks view: the service must exist (404), and the request must carry a valid signed JWT
    of a registered EHR client whose `aud` names this service (401, audited once as "auth:failed")."""

    @functools.wraps(view)
    def guarded(service_id: str, **kwargs: Any) -> Any:
        service = _service(service_id)
        token = _bearer()
        if token is None:
            _audit(Action.AUTH_FAILED, "denied", client_id=None, detail="cds-jwt: no bearer token")
            throttle(f"fail:{request.remote_addr}")  # failures count against the address, as for the API
            raise Unauthorized()
        service_path = f"/cds-services/{service.id}"
        paths = [service_path] if request.path == service_path else [request.path, service_path]
        try:
            g.cds_client = verify_token(services().store.engine, token, paths=paths, request_base=request.root_url)
        except CdsAuthError as exc:
            _audit(Action.AUTH_FAILED, "denied", client_id=exc.client_id, detail=f"cds-jwt: {exc.public_message}")
            throttle(f"fail:{request.remote_addr}")
            raise Unauthorized() from None
        throttle(f"cds-client:{g.cds_client.client_id}")  # each EHR client has the per-user rate of the API
        return view(service_id, **kwargs)

    return authenticated_by(AUTH_SCHEME)(cast(F, guarded))


def _client() -> VerifiedToken:
    found: VerifiedToken = g.cds_client
    return found


def _public_base() -> str:
    """The URL clinicians reach CareCast at: the client's registered audience, else this request's root."""
    return (_client().audience or request.root_url).rstrip("/")


def _json(schema: Mapping[str, Any]) -> Any:
    """The body of the current operation (415, 413), parsed and checked; 400 naming each failing field (CDS
    Hooks answers a malformed request with 400, not 422)."""
    return json_body(schema, mismatch=BadRequest, message="the request does not match the CDS Hooks request")


def _audited(action: str, work: Callable[[], tuple[Response, str | None, str]]) -> Response:
    """Run `work` (answer, patient uid, detail) and leave exactly one audit row whatever happens."""
    client_id = _client().client_id
    try:
        response, patient_uid, detail = work()
    except ApiError as exc:
        _audit(action, "failed", client_id=client_id, detail=f"{exc.http_status} {exc.code}")
        raise
    except Exception as exc:
        _audit(action, "error", client_id=client_id, detail=type(exc).__name__)
        raise
    _audit(action, "success", client_id=client_id, patient_uid=patient_uid, detail=detail)
    return response


# -- discovery ----------------------------------------------------------------------------------------------------

@ops.get("", summary="CDS Hooks discovery: the services CareCast offers", tag="cds-hooks",
         response={"type": "object", "properties": {"services": {"type": "array", "items": {"type": "object"}}}})
@public
def discovery() -> Response:
    return jsonify({"services": [s.discovery() for s in SERVICES.values()]})


# -- the patient-view service -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _CallRequest:
    hook_instance: str
    user: str
    patient_id: str
    prefetch: dict[str, Any] | None


@dataclass(frozen=True)
class _Risk:
    """One risk to put on a card, from a fresh score or a stored prediction."""

    task: str
    model_version: str
    risk: float
    band: str
    news2: int | None
    factors: list[dict[str, Any]]
    data_time: datetime | None
    threshold: float | None = None


def _parse_call(body: Mapping[str, Any], service: CdsService) -> _CallRequest:
    problems: list[FieldError] = []
    hook_instance = ""
    if body["hook"] != service.hook:
        problems.append(FieldError("body", "hook", f"this service answers the {service.hook} hook"))
    try:
        hook_instance = str(uuid.UUID(body["hookInstance"]))
    except ValueError:
        problems.append(FieldError("body", "hookInstance", "not a UUID"))
    context = body["context"]
    patient_id = context["patientId"]
    if not _FHIR_ID.fullmatch(patient_id):
        problems.append(FieldError("body", "context.patientId", "not a FHIR id"))
    encounter_id = context.get("encounterId")
    if encounter_id is not None and not _FHIR_ID.fullmatch(encounter_id):
        problems.append(FieldError("body", "context.encounterId", "not a FHIR id"))
    if problems:
        raise BadRequest("the request does not match the CDS Hooks request", fields=problems)
    user = context["userId"] if _SAFE_USER.fullmatch(context["userId"]) else "(unprintable)"
    prefetch = body.get("prefetch") or None
    if prefetch is not None and all(v is None for v in prefetch.values()):
        prefetch = None  # the EHR could fetch nothing: as if no prefetch was sent
    return _CallRequest(hook_instance=hook_instance, user=user, patient_id=patient_id, prefetch=prefetch)


def _decode_prefetch(prefetch: Mapping[str, Any]) -> list[Record]:
    """Domain records of the prefetched resources (Bundles or single resources). Entries CareCast cannot
    read (a code it does not map, a value out of range) are left out, as they would be quarantined."""
    records: list[Record] = []
    for key, value in prefetch.items():
        if not isinstance(value, dict) or value.get("resourceType") in (None, "OperationOutcome"):
            continue
        if value.get("resourceType") == "Bundle":
            doc = value if value.get("type") in BUNDLE_TYPES_ENTRYWISE else {**value, "type": "searchset"}
            records += decode_bundle(doc, f"prefetch {key}").records
            continue
        try:
            records += decode_resource(value) or []
        except FieldProblem:
            continue
    return records


def _iso(value: date | datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _frames_from_records(records: list[Record], patient_id: str) -> ClinicalFrames:
    """ClinicalFrames of one patient (under SYNTHETIC_PATIENT_ID) from decoded records; records about any other
    patient are left out, and a Patient resource of another patient is refused."""
    me = f"Patient/{patient_id}"
    pid = SYNTHETIC_PATIENT_ID
    latest: dict[str, Record] = {}
    for rec in records:  # the same resource in two prefetch searches counts once
        latest[rec.natural_key] = rec
    found = list(latest.values())
    patients = [r for r in found if isinstance(r, PatientRecord)]
    if any(p.natural_key != me for p in patients):
        raise BadRequest("the prefetch holds another patient",
                         fields=[FieldError("body", "prefetch.patient", "is not the patient of context.patientId")])
    patient = patients[0] if patients else PatientRecord(natural_key=me)
    mine = [r for r in found if getattr(r, "patient_ref", None) == me]
    encounters = [r for r in mine if isinstance(r, EncounterRecord)]
    encounter_ids = {e.natural_key: i for i, e in enumerate(encounters, start=1)}
    observations = [r for r in mine if isinstance(r, ObservationRecord)]
    conditions = [r for r in mine if isinstance(r, ConditionRecord)]
    reports = [r for r in mine if isinstance(r, DiagnosticReportRecord)]
    frames = ClinicalFrames(
        patients=pd.DataFrame([{"patient_id": pid, "sex": patient.sex, "race": patient.race,
                                "ethnicity": patient.ethnicity, "birth_date": _iso(patient.birth_date),
                                "state": patient.state}]),
        encounters=pd.DataFrame([{
            "encounter_id": encounter_ids[e.natural_key], "patient_id": pid, "admitted_at": _iso(e.admitted_at),
            "discharged_at": _iso(e.discharged_at), "unit": e.unit, "admission_type": e.admission_type,
            "encounter_class": e.encounter_class, "disposition": e.disposition} for e in encounters]),
        observations=pd.DataFrame([{
            "patient_id": pid, "encounter_id": encounter_ids.get(o.encounter_ref or ""), "variable": o.variable,
            "value": o.value, "effective_at": _iso(o.effective_at), "source": o.source} for o in observations]),
        conditions=pd.DataFrame([{"patient_id": pid, "code_system": c.code_system, "code": c.code,
                                  "noted_at": _iso(c.onset_at or c.recorded_at)} for c in conditions]),
        reports=pd.DataFrame([{"patient_id": pid, "issued_at": _iso(r.issued_at), "category": r.category,
                               "conclusion_codes": ",".join(r.conclusion_codes) or None} for r in reports]),
    )
    return frames.conformed()


def _require_model(task: str) -> Predictor:
    predictor = services().predictor
    predictor.maybe_refresh()
    if not predictor.ready or task not in predictor.versions():
        raise ServiceUnavailable("no model is loaded for this task")
    return cast("Predictor", predictor)


def _score_in_memory(frames: ClinicalFrames, patient_id: int, task: str) -> _Risk | None:
    """A fresh risk from frames, or None when there is nothing to say: no bedside observation, or no
    current (not discharged) encounter to score."""
    if latest_bedside_time(frames, patient_id) is None:
        return None
    try:
        scored = score_frames(_require_model(task), frames, patient_id, tasks=(task,))
    except NotFoundError:  # the model went away between the check and the score
        raise ServiceUnavailable("no model is loaded for this task") from None
    if not scored.risks or scored.encounter_id is None:
        return None
    enc = frames.encounters
    discharged = enc.loc[enc["encounter_id"] == scored.encounter_id, "discharged_at"]
    if discharged.notna().any():
        return None  # the latest stay is over: an inpatient risk from it would mislead
    r = scored.risks[0]
    observe_prediction(r.task, r.model_version, float(r.risk), source="cds")
    return _Risk(task=r.task, model_version=r.model_version, risk=float(r.risk), band=r.band, news2=scored.news2,
                 factors=list(r.factors), data_time=scored.data_time, threshold=r.threshold)


def _stored_patient(patient_id: str) -> tuple[int, str] | None:
    """(row id, public uid) of the stored patient with this FHIR id, found by its keyed record key."""
    store = services().store
    key = store.keyring.record_key(f"Patient/{patient_id}")
    with store.engine.connect() as conn:
        row = conn.execute(select(S.Patient.id, S.Patient.uid).where(S.Patient.source_key == key)).first()
    return None if row is None else (int(row.id), str(row.uid))


def _stored_risk(patient_row_id: int, task: str) -> _Risk | None:
    """The stored patient's latest risk if its stay is still open; if none was stored yet, a fresh score of
    the stored data (read only: nothing is written)."""
    store = services().store
    p = latest_predictions(store.engine, patient_row_id).get(task)
    if p is None:
        frames = load_frames(store.engine, store.keyring, patient_ids=[patient_row_id])
        return _score_in_memory(frames, patient_row_id, task)
    if p.encounter_id is not None:
        with store.engine.connect() as conn:
            discharged = conn.execute(select(S.Encounter.discharged_at)
                                      .where(S.Encounter.id == p.encounter_id)).scalar()
        if discharged is not None:
            return None
    return _Risk(task=p.task, model_version=p.model_version, risk=p.risk, band=p.band, news2=p.news2,
                 factors=list(p.factors), data_time=p.data_time)


def _percent(risk: float) -> str:
    if risk < 0.005:
        return "<1%"
    if risk > 0.995:
        return ">99%"
    return f"{round(risk * 100)}%"


def _markdown(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _factor_line(f: Mapping[str, Any]) -> str | None:
    text = f.get("text")
    if not isinstance(text, str) or not text.strip():
        feature = f.get("feature")
        if not isinstance(feature, str):
            return None
        text = feature.replace("_", " ")
    contribution = f.get("contribution")
    direction = ""
    if isinstance(contribution, int | float):
        direction = " (raises the risk)" if contribution > 0 else " (lowers the risk)" if contribution < 0 else ""
    return f"- {_markdown(text.strip())}{direction}"


def _card(risk: _Risk, *, base: str, patient_uid: str | None) -> dict[str, Any]:
    percent = _percent(risk.risk)
    news2 = f"NEWS2 {risk.news2}" if risk.news2 is not None else "NEWS2 not available"
    outcome = TASKS[risk.task].description if risk.task in TASKS else risk.task
    lines = [f"**Deterioration risk {percent}** ({risk.band} band) - estimated probability of "
             f"{_markdown(outcome)}."]
    if risk.threshold is not None:
        lines[0] += f" Alert threshold {_percent(risk.threshold)}."
    factors = [line for f in risk.factors[:TOP_FACTORS] if (line := _factor_line(f)) is not None]
    if factors:
        lines += ["", "**Top contributing factors**", "", *factors]
    lines += ["", f"**{news2}**" + (" (the simple bedside score, for comparison)" if risk.news2 is not None else "")]
    when = f"; data up to {risk.data_time.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if risk.data_time else ""
    lines += ["", f"Model {_code(risk.task)} version {_code(risk.model_version)}{when}."]
    lines += ["", "_CareCast estimates risk from recorded data. It is not a diagnosis: use it with clinical "
                  "judgement._"]
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": f"Deterioration risk {percent} ({risk.band}) - {news2}"[:SUMMARY_LIMIT],
        "detail": "\n".join(lines),
        "indicator": _INDICATOR.get(risk.band, "info"),
        "source": {"label": "CareCast", "url": f"{base}/api/v1/docs"},
        "overrideReasons": [{"system": OVERRIDE_REASON_SYSTEM, "code": code, "display": display}
                            for code, display in OVERRIDE_REASONS],
    }
    if patient_uid is not None:
        card["links"] = [{"label": "Open patient in CareCast", "url": f"{base}/ui/patients/{patient_uid}",
                          "type": "absolute"}]
    return card


@ops.post("/<service_id>", summary="Call a CDS service (patient-view): a card with the deterioration risk",
          tag="cds-hooks", description="Authenticated by the EHR's signed JWT (see docs/serving.md). With "
                                       "`prefetch`, scores the resources sent without storing them; without, "
                                       "reads the stored patient's latest risk (412 if the patient is unknown).",
          body=Body(schema=_CALL_SCHEMA, max_bytes=MAX_CALL_BYTES),
          response={"type": "object", "properties": {"cards": {"type": "array", "items": _CARD}}},
          errors=(401, 404, 412))
@cds_jwt_required
def call_service(service_id: str) -> Response:
    service = _service(service_id)

    def work() -> tuple[Response, str | None, str]:
        call = _parse_call(_json(_CALL_SCHEMA), service)
        stored = _stored_patient(call.patient_id)
        uid = stored[1] if stored else None
        if call.prefetch is not None:
            frames = _frames_from_records(_decode_prefetch(call.prefetch), call.patient_id)
            risk = _score_in_memory(frames, SYNTHETIC_PATIENT_ID, service.task)
            via = "prefetch"
        elif stored is not None:
            risk = _stored_risk(stored[0], service.task)
            via = "store"
        else:
            raise PreconditionFailed("no prefetch was sent and the patient is not stored: send the prefetch")
        cards = [] if risk is None else [_card(risk, base=_public_base(), patient_uid=uid)]
        detail = f"instance={call.hook_instance} user={call.user} via={via} cards={len(cards)}"
        if cards:
            detail += f" card={cards[0]['uuid']}"
        return jsonify({"cards": cards}), uid, detail

    return _audited(f"cds:{service.hook}", work)


# -- feedback -----------------------------------------------------------------------------------------------------

def _timestamp(value: str, where: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest("the feedback does not match the CDS Hooks request",
                         fields=[FieldError("body", where, "not an ISO 8601 date-time")]) from None
    if when.tzinfo is None:
        raise BadRequest("the feedback does not match the CDS Hooks request",
                         fields=[FieldError("body", where, "date-time needs a time-zone offset")])
    return when.astimezone(UTC)


def _feedback_rows(items: list[dict[str, Any]], service: CdsService, iss: str) -> list[dict[str, Any]]:
    """One row per card outcome and override reason; comments encrypted (free text may name anyone)."""
    keyring = services().store.keyring
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    problems: list[FieldError] = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]"
        try:
            card = str(uuid.UUID(item["card"]))
        except ValueError:
            problems.append(FieldError("body", f"{where}.card", "not a UUID"))
            continue
        reasons = list(item.get("overrideReasons") or [])
        if item.get("overrideReason"):
            reasons.insert(0, item["overrideReason"])
        if reasons and item["outcome"] != "overridden":
            problems.append(FieldError("body", f"{where}.overrideReason", "only with outcome overridden"))
            continue
        when = _timestamp(item["outcomeTimestamp"], f"{where}.outcomeTimestamp")
        for reason in reasons or [{}]:
            coding = reason.get("reason") or {}
            comment = reason.get("userComment")
            rows.append({"client_iss": iss, "service": service.id, "card_uuid": card, "outcome": item["outcome"],
                         "reason_system": coding.get("system"), "reason_code": coding.get("code"),
                         "comment_enc": keyring.encrypt(comment, "cds_feedback.comment") if comment else None,
                         "outcome_at": when, "received_at": now})
    if problems:
        raise BadRequest("the feedback does not match the CDS Hooks request", fields=problems)
    return rows


@ops.post("/<service_id>/feedback", summary="Feedback on cards: accepted or overridden, with reasons",
          tag="cds-hooks", description="Stored for monitoring; comments are encrypted.",
          body=Body(schema=_FEEDBACK_SCHEMA, max_bytes=MAX_FEEDBACK_BYTES),
          response={"type": "object", "properties": {"received": {"type": "integer"}}}, errors=(401, 404))
@cds_jwt_required
def feedback(service_id: str) -> Response:
    service = _service(service_id)

    def work() -> tuple[Response, str | None, str]:
        items = _json(_FEEDBACK_SCHEMA)["feedback"]
        rows = _feedback_rows(items, service, _client().iss)
        with services().store.engine.begin() as conn:
            conn.execute(insert(S.CdsFeedback), rows)
        outcomes = [item["outcome"] for item in items]
        for outcome in outcomes:
            observe_feedback("cds", outcome)
        detail = (f"items={len(items)} accepted={outcomes.count('accepted')} "
                  f"overridden={outcomes.count('overridden')}")
        return jsonify({"received": len(items)}), None, detail

    return _audited("cds:feedback", work)
