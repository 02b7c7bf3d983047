"""Authentication, unit restrictions and break-glass, each refusal audited exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient

from carecast.errors import ConfigError
from carecast.security.audit import AuditLog
from carecast.security.permissions import Permission
from carecast.security.tokens import issue_token
from carecast.security.users import create_user
from carecast.serving.auth import check_declared, public, requires
from carecast.store import Store

from .conftest import PASSWORD, Hospital, assert_no_secrets, audit_count, audit_rows, bearer


@pytest.mark.parametrize("header", [None, "Bearer cc_not-a-real-token", "Basic dXNlcjpwYXNz", "Bearer "])
def test_missing_or_unknown_token_is_401_and_audited_once(client: FlaskClient, store: Store,
                                                          header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/patients", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json is not None and response.json["error"]["code"] == "unauthorized"
    rows = audit_rows(store)
    assert [(r.action, r.outcome) for r in rows] == [("auth:failed", "denied")]
    assert rows[0].request_id == response.headers["X-Request-ID"]
    assert rows[0].source_ip == "127.0.0.1"


def test_expired_and_revoked_tokens_are_401(client: FlaskClient, store: Store) -> None:
    uid = create_user(store.engine, "old-nurse", PASSWORD, "nurse", ["Ward A"])
    expired = issue_token(store.engine, uid, "old", [], ttl_hours=1, now=datetime.now(UTC) - timedelta(hours=2))
    response = client.get("/api/v1/patients", headers=bearer(expired))
    assert response.status_code == 401
    assert audit_count(store) == 1 and audit_rows(store)[0].action == "auth:failed"


def test_missing_permission_is_403_and_audited_once(client: FlaskClient, store: Store, tokens: dict[str, str]) -> None:
    response = client.get("/api/v1/patients", headers=bearer(tokens["data_scientist"]))
    assert response.status_code == 403
    rows = audit_rows(store)
    assert [(r.action, r.outcome, r.username, r.role) for r in rows] == [
        ("auth:denied", "denied", "test-data_scientist", "data_scientist")]
    assert rows[0].detail == "lacks patient:read"


def test_scoped_token_narrows_the_role(client: FlaskClient, store: Store, hospital: Hospital) -> None:
    uid = create_user(store.engine, "scoped-nurse", PASSWORD, "nurse", ["Ward A"])
    token = issue_token(store.engine, uid, "read-only", ["patient:read"], ttl_hours=1)
    listed = client.get("/api/v1/patients", headers=bearer(token))
    assert listed.status_code == 200 and listed.json is not None
    assert all("demographics" not in p for p in listed.json["patients"])  # no patient:demographics scope
    assert client.get(f"/api/v1/patients/{hospital.uids['a1']}/predictions", headers=bearer(token)).status_code == 403


def test_nurse_of_ward_a_is_refused_ward_b_until_break_glass(client: FlaskClient, store: Store, hospital: Hospital,
                                                             tokens: dict[str, str]) -> None:
    b1 = hospital.uids["b1"]
    nurse = bearer(tokens["nurse"])
    refused = client.get(f"/api/v1/patients/{b1}", headers=nurse)
    assert refused.status_code == 403
    assert_no_secrets(refused.get_data(as_text=True))
    rows = audit_rows(store)
    assert [(r.action, r.outcome, r.patient_uid) for r in rows] == [("auth:denied", "denied", b1)]

    short = client.post(f"/api/v1/patients/{b1}/break-glass", json={"reason": "urgent"}, headers=nurse)
    assert short.status_code == 422
    assert short.json is not None and short.json["error"]["fields"][0]["field"] == "reason"

    granted = client.post(f"/api/v1/patients/{b1}/break-glass", json={"reason": "rapid response call on 4W"},
                          headers=nurse)
    assert granted.status_code == 201 and granted.json is not None
    expires = datetime.fromisoformat(granted.json["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(minutes=60)
    rows = audit_rows(store)
    assert (rows[-1].action, rows[-1].outcome, rows[-1].patient_uid) == ("patient:break-glass", "success", b1)
    assert "rapid response" not in (rows[-1].detail or "")  # the reason is kept encrypted, not in the audit trail

    before = audit_count(store)
    allowed = client.get(f"/api/v1/patients/{b1}", headers=nurse)
    assert allowed.status_code == 200
    rows = audit_rows(store)
    assert len(rows) == before + 1 and (rows[-1].action, rows[-1].patient_uid) == ("patient:read", b1)
    assert AuditLog(store.engine).verify().ok


def test_nurse_list_shows_only_her_units(client: FlaskClient, hospital: Hospital, tokens: dict[str, str]) -> None:
    listed = client.get("/api/v1/patients", headers=bearer(tokens["nurse"]))
    assert listed.json is not None
    assert {p["uid"] for p in listed.json["patients"]} == {hospital.uids["a1"], hospital.uids["a2"]}
    other = client.get("/api/v1/patients?unit=Ward%20B", headers=bearer(tokens["nurse"]))
    assert other.json is not None and other.json["patients"] == []


def test_an_endpoint_without_a_declaration_refuses_the_app() -> None:
    app = Flask("t")
    bp = Blueprint("api_v1", __name__)

    @bp.get("/declared")
    @requires(Permission.MODEL_READ)
    def declared() -> str:
        return ""

    @bp.get("/open")
    @public
    def open_() -> str:
        return ""

    @bp.get("/forgotten")
    def forgotten() -> str:
        return ""

    app.register_blueprint(bp)
    with pytest.raises(ConfigError, match=r"api_v1\.forgotten"):
        check_declared(app)
