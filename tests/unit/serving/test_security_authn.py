"""Figure 11, authentication negatives: expired, wrong-audience, `alg: none`, bad-signature and missing credentials
get 401 and are audited once, on the API's bearer tokens and on CDS Hooks' JWTs; repeated failed sign-ins are
throttled (429) before the password is even checked. (CDS Hooks' full list of JWT refusals is in
test_cds_hooks.py; here every negative meets both entry points.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from carecast.security.tokens import issue_token, revoke_token
from carecast.security.users import create_user
from carecast.serving.ratelimit import SIGN_IN_FAILURES_PER_MINUTE
from carecast.store import Store
from carecast.store import schema as S
from tests.unit.security.test_cds_jwt import Signer, alg_none_token, ec_signer, make_token, register
from tests.unit.serving.ui.conftest import HTML, csrf_of

from .conftest import PASSWORD, audit_rows

SERVICE = "/cds-services/carecast-deterioration"
CDS_BODY = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/1", "patientId": "x9"}}


def negative_credentials(store: Store, ehr: Signer) -> dict[str, str | None]:
    """Credentials that must all be refused, as one dict (name -> bearer value, None for none at all)."""
    uid = create_user(store.engine, "negatives", PASSWORD, "admin")
    expired = issue_token(store.engine, uid, "old", [], ttl_hours=1, now=datetime.now(UTC) - timedelta(hours=2))
    revoked = issue_token(store.engine, uid, "revoked", [], ttl_hours=1)
    with store.engine.connect() as conn:
        revoke_token(store.engine, int(conn.execute(select(func.max(S.ApiToken.id))).scalar_one()))
    valid = issue_token(store.engine, uid, "valid", [], ttl_hours=1)
    now = int(time.time())
    return {
        "missing": None,
        "expired API token": expired,
        "revoked API token": revoked,
        "API token with one character changed (bad signature)": valid[:-1] + ("A" if valid[-1] != "A" else "B"),
        "expired JWT": make_token(ehr, exp=now - 60, iat=now - 360),
        "wrong-audience JWT": make_token(ehr, aud="https://other.example/cds-services/x"),
        "alg none JWT": alg_none_token(ehr.kid),
        "bad-signature JWT": make_token(Signer(ec_signer().key, "ES384", ehr.kid)),
    }


def refusals(client: FlaskClient, store: Store, credentials: dict[str, str | None]) -> tuple[int, list[str]]:
    """Each credential against the API and CDS Hooks: the number of cases and what went wrong."""
    problems: list[str] = []
    cases = 0
    for name, value in credentials.items():
        headers = {"Authorization": f"Bearer {value}"} if value is not None else {}
        for method, path, body in (("GET", "/api/v1/patients", None), ("GET", "/metrics", None),
                                   ("POST", "/api/v1/predict", {"task": "deterioration_24h", "features": {}}),
                                   ("POST", SERVICE, CDS_BODY), ("POST", SERVICE + "/feedback", {"feedback": []})):
            before = len(audit_rows(store))
            response = client.open(path, method=method, headers=headers, json=body)
            rows = audit_rows(store)[before:]
            cases += 1
            if response.status_code != 401 or "WWW-Authenticate" not in response.headers:
                problems.append(f"{name} on {path}: {response.status_code}")
            if [(r.action, r.outcome) for r in rows] != [("auth:failed", "denied")]:
                problems.append(f"{name} on {path}: audit {[(r.action, r.outcome) for r in rows]}")
            if value is not None and value in response.get_data(as_text=True):
                problems.append(f"{name} on {path}: the credential is echoed")
    return cases, problems


def test_every_negative_credential_is_401_and_audited_once(app: Flask, client: FlaskClient, store: Store) -> None:
    ehr = ec_signer()
    register(store, ehr)
    cases, problems = refusals(client, store, negative_credentials(store, ehr))
    assert cases == 40 and not problems, "\n".join(problems)


def sign_in_attempt(client: FlaskClient, username: str, password: str) -> Any:
    page = client.get("/ui/login", headers=HTML)
    return client.post("/ui/login", data={"username": username, "password": password,
                                          "csrf_token": csrf_of(page.text)}, headers=HTML)


def test_repeated_failed_sign_ins_are_throttled_before_the_password_is_checked(app: Flask, store: Store,
                                                                               tokens: dict[str, str]) -> None:
    client = app.test_client()
    codes = [sign_in_attempt(client, f"nobody{i}", "wrong password").status_code
             for i in range(SIGN_IN_FAILURES_PER_MINUTE + 2)]
    assert codes[:SIGN_IN_FAILURES_PER_MINUTE - 1] == [401] * (SIGN_IN_FAILURES_PER_MINUTE - 1)
    assert codes[-1] == 429
    throttled = sign_in_attempt(client, "test-admin", PASSWORD)  # even the right password: refused, unchecked
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    assert "text/html" in throttled.content_type
    rows = [r for r in audit_rows(store) if r.action == "auth:failed"]
    assert len(rows) == len(codes) + 1  # every attempt audited once, throttled or not
    assert rows[-1].detail == "sign-in throttled"
    assert not [r for r in audit_rows(store) if r.action == "auth:login"]
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "10.1.2.3"  # another address is not affected
    assert sign_in_attempt(other, "test-admin", PASSWORD).status_code == 302
