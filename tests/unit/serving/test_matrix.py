"""The authorization matrix: every api_v1 endpoint x every role (and x a patient of another unit).

The endpoint's declared permission alone decides 403 or success, and each request leaves exactly the
audit rows it should: one "auth:denied" row for a refusal, one row for a read or write of patient data,
none for public or model endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from flask import Flask
from flask.testing import FlaskClient

from carecast.security.permissions import ROLE_PERMISSIONS, ROLES
from carecast.serving.auth import is_public, permission_of
from carecast.store import Store
from tests import factories as F
from tests.unit.ingest.test_dicom import write_dicom

from .conftest import Hospital, audit_rows, bearer

TASK = "deterioration_24h"


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # "{p}" is replaced by the patient's uid
    ok: int = 200
    audited: bool = True
    patient: bool = False  # subject to the patient's unit
    kwargs: Callable[[Path], dict[str, Any]] = lambda _tmp: {}


def _ndjson(*resources: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


def _dicom(tmp: Path) -> dict[str, Any]:
    path = write_dicom(tmp / "study.dcm", patient_id="MRN-7731-QX-a1")
    return {"data": path.read_bytes(), "content_type": "application/dicom"}


CALLS: dict[str, Call] = {
    "api_v1.openapi_json": Call("GET", "/api/v1/openapi.json", audited=False),
    "api_v1.docs": Call("GET", "/api/v1/docs", audited=False),
    "api_v1.list_patients": Call("GET", "/api/v1/patients"),
    "api_v1.patient_detail": Call("GET", "/api/v1/patients/{p}", patient=True),
    "api_v1.patient_observations": Call("GET", "/api/v1/patients/{p}/observations", patient=True),
    "api_v1.patient_imaging": Call("GET", "/api/v1/patients/{p}/imaging", patient=True),
    "api_v1.patient_predictions": Call("GET", "/api/v1/patients/{p}/predictions", patient=True),
    "api_v1.patient_trajectory": Call("GET", f"/api/v1/patients/{{p}}/predictions/{TASK}/trajectory", patient=True),
    "api_v1.patient_risk_assessment": Call("GET", "/api/v1/patients/{p}/risk-assessment", patient=True),
    "api_v1.stream.stream_events": Call("GET", "/api/v1/stream"),  # the body (never read here) is the live stream
    "api_v1.break_glass": Call("POST", "/api/v1/patients/{p}/break-glass", ok=201,
                               kwargs=lambda _t: {"json": {"reason": "cardiac arrest call, covering"}}),
    "api_v1.predict": Call("POST", "/api/v1/predict",
                           kwargs=lambda _t: {"json": {"task": TASK, "features": {"heart_rate_last_4h": 110}}}),
    "api_v1.predict_batch": Call("POST", "/api/v1/predict/batch",
                                 kwargs=lambda _t: {"json": {"task": TASK, "rows": [{"age": 70}, {}]}}),
    "api_v1.list_models": Call("GET", "/api/v1/models", audited=False),
    "api_v1.model_detail": Call("GET", f"/api/v1/models/{TASK}", audited=False),
    "api_v1.ingest_fhir": Call("POST", "/api/v1/ingest/fhir", kwargs=lambda _t: {"json": F.bundle(
        [F.vital("new1", "8867-4", 101, "/min", pid="a1", eid="ea1")], "batch")}),
    "api_v1.ingest_ndjson": Call("POST", "/api/v1/ingest/ndjson", kwargs=lambda _t: {
        "data": _ndjson(F.vital("new2", "8867-4", 99, "/min", pid="a1", eid="ea1")),
        "content_type": "application/fhir+ndjson"}),
    "api_v1.ingest_wearables": Call("POST", "/api/v1/ingest/wearables", kwargs=lambda _t: {
        "data": _ndjson({"device_id": "W-1", "patient": "Patient/a1", "type": "heart_rate", "value": 90,
                         "unit": "/min", "time": "2026-01-05T10:01:00Z"}),
        "content_type": "application/x-ndjson"}),
    "api_v1.ingest_dicom": Call("POST", "/api/v1/ingest/dicom", kwargs=_dicom),
}


def _api_endpoints(app: Flask) -> set[str]:
    return {r.endpoint for r in app.url_map.iter_rules() if r.endpoint.startswith("api_v1.")}


def _expected(app: Flask, endpoint: str, role: str) -> bool:
    view = app.view_functions[endpoint]
    if is_public(view):
        return True
    permission = permission_of(view)
    assert permission is not None
    return permission in ROLE_PERMISSIONS[role]


def test_every_endpoint_is_in_the_table(app: Flask) -> None:
    assert _api_endpoints(app) == set(CALLS)


def test_authorization_matrix(app: Flask, client: FlaskClient, store: Store, hospital: Hospital,
                              tokens: dict[str, str], tmp_path: Path) -> None:
    problems: list[str] = []
    for endpoint, call in sorted(CALLS.items()):
        for role in ROLES:
            before = len(audit_rows(store))
            response = client.open(call.path.format(p=hospital.uids["a1"]), method=call.method,
                                   headers=bearer(tokens[role]), **call.kwargs(tmp_path))
            allowed = _expected(app, endpoint, role)
            want = call.ok if allowed else 403
            if response.status_code != want:
                problems.append(f"{endpoint} as {role}: {response.status_code}, expected {want} "
                                f"{response.get_data(as_text=True)[:200]}")
                continue
            rows = audit_rows(store)[before:]
            if not allowed:
                wanted_rows = [("auth:denied", "denied")]
            elif call.audited:
                wanted_rows = [(rows[0].action, "success")] if rows else [("(an audit row)", "success")]
            else:
                wanted_rows = []
            if [(r.action, r.outcome) for r in rows] != wanted_rows:
                problems.append(f"{endpoint} as {role}: audit rows {[(r.action, r.outcome) for r in rows]}")
            if allowed and call.patient and rows and rows[0].patient_uid != hospital.uids["a1"]:
                problems.append(f"{endpoint} as {role}: audit row names no patient")
    assert not problems, "\n".join(problems)


def test_patient_of_another_unit_is_refused(app: Flask, client: FlaskClient, store: Store, hospital: Hospital,
                                            tokens: dict[str, str], tmp_path: Path) -> None:
    b1 = hospital.uids["b1"]
    problems: list[str] = []
    for endpoint, call in sorted(CALLS.items()):
        if not call.patient:
            continue
        for role in ("clinician", "nurse"):
            if not _expected(app, endpoint, role):
                continue
            before = len(audit_rows(store))
            response = client.open(call.path.format(p=b1), method=call.method, headers=bearer(tokens[role]),
                                   **call.kwargs(tmp_path))
            rows = audit_rows(store)[before:]
            if response.status_code != 403:
                problems.append(f"{endpoint} as {role} on Ward B: {response.status_code}")
            if [(r.action, r.outcome, r.patient_uid) for r in rows] != [("auth:denied", "denied", b1)]:
                problems.append(f"{endpoint} as {role} on Ward B: audit rows {[(r.action, r.outcome) for r in rows]}")
    assert not problems, "\n".join(problems)
