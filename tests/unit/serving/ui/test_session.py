"""Sign-in, the session cookie, CSRF, idle logoff, sign-out, the session key and deny by default."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from carecast.config import Settings
from carecast.errors import ConfigError
from carecast.security.permissions import Permission
from carecast.serving import create_app
from carecast.serving.auth import authentication_of, is_public, permission_of
from carecast.serving.ui.session import SECRET_FILE, CookieSessions, safe_next, secret_key
from carecast.store import Store
from tests.unit.serving.conftest import FakeBus, FakePredictor, FakeQueue, audit_count, audit_rows

from .conftest import HTML, actions, csrf_of, session_csrf, sign_in

P = Permission
# Every UI endpoint and what it declares: a permission, the session scheme, or public.
DECLARED = {
    "ui.login": "public", "ui.logout": "public", "ui.static": "public",
    "ui.home": "session", "ui.account": "session", "ui.keepalive": "session", "ui.session_status": "session",
    "ui.ward": P.PATIENT_READ, "ui.ward_table": P.PATIENT_READ, "ui.patient": P.PATIENT_READ,
    "ui.patient_risk": P.PATIENT_READ, "ui.break_glass": P.PATIENT_READ, "ui.alert_feedback_view": P.PATIENT_READ,
    "ui.stream": P.PREDICTION_READ, "ui.models": P.MODEL_READ, "ui.model_promote": P.MODEL_MANAGE,
    "ui.model_rollback": P.MODEL_MANAGE, "ui.population": P.MODEL_READ, "ui.monitoring": P.METRICS_READ,
    "ui.admin_users": P.USER_MANAGE, "ui.admin_create_user": P.USER_MANAGE, "ui.admin_set_units": P.USER_MANAGE,
    "ui.admin_roles": P.USER_MANAGE, "ui.admin_units": P.USER_MANAGE, "ui.admin_tokens": P.USER_MANAGE,
    "ui.admin_issue_token": P.USER_MANAGE, "ui.admin_revoke_token": P.USER_MANAGE,
    "ui.audit": P.AUDIT_READ, "ui.audit_csv": P.AUDIT_READ,
}


def test_every_ui_view_declares_what_it_needs(app: Flask) -> None:
    found = {}
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("ui."):
            continue
        view = app.view_functions[rule.endpoint]
        found[rule.endpoint] = ("public" if is_public(view) else authentication_of(view) or permission_of(view))
    assert found == DECLARED


def test_signed_out_browsers_are_sent_to_sign_in_and_scripts_get_401(client: FlaskClient) -> None:
    page = client.get("/ui/ward?unit=Ward+A", headers=HTML)
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/ui/login?next=/ui/ward")
    assert client.get("/ui/ward/table", headers={"Accept": "application/x-carecast-fragment"}).status_code == 401
    assert client.get("/ui/stream", headers={"Accept": "text/event-stream"}).status_code == 401
    assert client.get("/", headers=HTML).headers["Location"] == "/ui/"


def test_session_cookie_flags(client: FlaskClient, settings: Settings, store: Store, tmp_path: Path) -> None:
    cookie = client.get("/ui/login", headers=HTML).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie  # test env: Secure
    dev = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "dev"), "CARECAST_ENV": "development"})
    app = create_app(dev, store=store, predictor=FakePredictor(), queue=FakeQueue(), bus=FakeBus())
    cookie = app.test_client().get("/ui/login", headers=HTML).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_requests_without_the_session_cookie_skip_the_signing_serializer(
        app: Flask, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    real = CookieSessions.get_signing_serializer

    def counted(self: CookieSessions, flask_app: Flask) -> Any:
        built.append("serializer")
        return real(self, flask_app)

    monkeypatch.setattr(CookieSessions, "get_signing_serializer", counted)
    api = app.test_client()
    answer = api.get("/api/v1/patients", headers={"Authorization": f"Bearer {tokens['clinician']}"})
    assert answer.status_code == 200 and built == []  # an API call: no cookie, nothing to verify or sign
    browser = app.test_client()
    assert sign_in(browser, "test-clinician").status_code == 302 and built  # a session is still signed ...
    built.clear()
    assert browser.get("/ui/ward?unit=Ward+A", headers=HTML).status_code == 200 and built  # ... and verified
    assert app.test_client().get("/ui/ward?unit=Ward+A", headers=HTML).status_code == 302  # none: sign in


def test_pages_carry_security_headers(client: FlaskClient) -> None:
    page = client.get("/ui/login", headers=HTML)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"


def test_sign_in_lands_on_the_role_home_and_is_audited(app: Flask, store: Store, tokens: dict[str, str]) -> None:
    homes = {"nurse": "/ui/ward", "clinician": "/ui/ward", "data_scientist": "/ui/models",
             "admin": "/ui/admin/users", "auditor": "/ui/audit"}
    for role, home in homes.items():
        answer = sign_in(app.test_client(), f"test-{role}")
        assert answer.status_code == 302 and answer.headers["Location"] == home
    assert actions(store).count("auth:login") == len(homes)


def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(app: Flask, tokens: dict[str, str]) -> None:
    client = app.test_client()
    page = client.get("/ui/login?next=/ui/audit", headers=HTML)
    answer = client.post("/ui/login", data={"username": "test-auditor", "password": "correct horse battery staple",
                                            "next": "/ui/audit", "csrf_token": csrf_of(page.text)}, headers=HTML)
    assert answer.headers["Location"] == "/ui/audit"
    for bad in ("https://evil.example/", "//evil.example/x", "/\\evil", "javascript:alert(1)", None, ""):
        assert safe_next(bad) is None
    assert safe_next("/ui/patients/abc?x=1") == "/ui/patients/abc?x=1"


def test_wrong_password_is_refused_audited_and_locks_after_five(app: Flask, store: Store,
                                                                 tokens: dict[str, str]) -> None:
    client = app.test_client()
    for _ in range(5):
        answer = sign_in(client, "test-nurse", "wrong password here")
        assert answer.status_code == 401 and "Wrong username or password" in answer.text
        assert "wrong password here" not in answer.text
    rows = [r for r in audit_rows(store) if r.action == "auth:failed"]
    assert len(rows) == 5 and all(r.username == "test-nurse" and r.outcome == "denied" for r in rows)
    assert sign_in(client, "test-nurse").status_code == 401  # locked: the right password is refused too


def test_posts_without_the_csrf_token_are_refused(browser: Callable[[str], FlaskClient], store: Store,
                                                 app: Flask, tokens: dict[str, str]) -> None:
    admin = browser("admin")
    before = audit_count(store)
    answer = admin.post("/ui/admin/users", data={"username": "mallory", "role": "admin",
                                                 "password": "a long enough password"}, headers=HTML)
    assert answer.status_code == 403 and "expired" in answer.text
    assert audit_count(store) == before + 1 and actions(store)[-1] == "auth:csrf-refused"
    wrong = admin.post("/ui/admin/users", data={"username": "mallory", "role": "admin", "csrf_token": "forged",
                                                "password": "a long enough password"}, headers=HTML)
    assert wrong.status_code == 403
    assert "mallory" not in admin.get("/ui/admin/users", headers=HTML).text
    # the sign-in form is protected too (login CSRF)
    fresh = app.test_client()
    assert fresh.post("/ui/login", data={"username": "test-nurse", "password": "correct horse battery staple"},
                      headers=HTML).status_code == 403


def test_idle_session_is_logged_off_with_one_audit_row(browser: Callable[[str], FlaskClient], store: Store,
                                                       settings: Settings) -> None:
    nurse = browser("nurse")
    assert nurse.get("/ui/ward", headers=HTML).status_code == 200
    with nurse.session_transaction() as sess:
        sess["seen"] = time.time() - settings.session_idle_minutes * 60 - 1
    before = audit_count(store)
    answer = nurse.get("/ui/ward", headers=HTML)
    assert answer.status_code == 302 and "reason=idle" in answer.headers["Location"]
    assert audit_count(store) == before + 1 and actions(store)[-1] == "auth:logoff-idle"
    assert nurse.get("/ui/ward", headers=HTML).status_code == 302  # the session is gone, not just refused once
    assert "after a period without activity" in nurse.get("/ui/login?reason=idle", headers=HTML).text


def test_live_refreshes_do_not_count_as_activity(browser: Callable[[str], FlaskClient],
                                                 hospital: object) -> None:
    nurse = browser("nurse")
    old = time.time() - 300
    with nurse.session_transaction() as sess:
        sess["seen"] = old
    assert nurse.get("/ui/ward/table", headers={"Accept": "application/x-carecast-fragment"}).status_code == 200
    assert nurse.get("/ui/session/status").get_json()["remaining"] < 15 * 60 - 299
    with nurse.session_transaction() as sess:
        assert sess["seen"] == old
    kept = nurse.post("/ui/session/keepalive", headers={"X-CSRF-Token": session_csrf(nurse)})
    assert kept.status_code == 200 and kept.get_json()["remaining"] > 15 * 60 - 5


def test_sign_out_ends_the_session(browser: Callable[[str], FlaskClient], store: Store) -> None:
    nurse = browser("nurse")
    answer = nurse.post("/ui/logout", data={"csrf_token": session_csrf(nurse)}, headers=HTML)
    assert answer.status_code == 302 and "reason=signed-out" in answer.headers["Location"]
    assert actions(store)[-1] == "auth:logout"
    assert nurse.get("/ui/ward", headers=HTML).status_code == 302


def test_session_key_is_required_in_production(settings: Settings, store: Store, tmp_path: Path) -> None:
    prod = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "p"), "CARECAST_ENV": "production",
                              "CARECAST_DATA_KEY": "x" * 44})
    with pytest.raises(ConfigError, match="CARECAST_SECRET_KEY"):
        create_app(prod, store=store, predictor=FakePredictor(), queue=FakeQueue(), bus=FakeBus())
    short = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "p"), "CARECAST_SECRET_KEY": "too short"})
    with pytest.raises(ConfigError, match="at least 32"):
        secret_key(short)
    given = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "p"), "CARECAST_ENV": "production",
                               "CARECAST_SECRET_KEY": "k" * 40})
    assert secret_key(given) == "k" * 40


def test_development_key_is_generated_once_and_private(tmp_path: Path) -> None:
    dev = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "d")})
    first = secret_key(dev)
    path = tmp_path / "d" / SECRET_FILE
    assert len(first) >= 32 and os.stat(path).st_mode & 0o777 == 0o600
    assert secret_key(dev) == first


def test_a_signed_in_role_without_the_permission_gets_403_and_one_denial(
        browser: Callable[[str], FlaskClient], store: Store) -> None:
    nurse = browser("nurse")
    before = audit_count(store)
    answer = nurse.get("/ui/admin/users", headers=HTML)
    assert answer.status_code == 403 and "Not allowed" in answer.text and answer.mimetype == "text/html"
    assert audit_count(store) == before + 1 and actions(store)[-1] == "auth:denied"
