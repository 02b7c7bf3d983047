"""Security headers on every kind of response, strict CORS, and the size and rate limits of each endpoint family."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from carecast.config import Settings
from carecast.errors import ConfigError
from carecast.serving import create_app
from carecast.serving.auth import SIGN_IN_LIMITER
from carecast.serving.context import services
from carecast.serving.ratelimit import TokenBucketLimiter
from carecast.store import Store
from tests.unit.security.test_cds_jwt import ec_signer, make_token, register
from tests.unit.serving.ui.conftest import HTML, csrf_of

from .conftest import FakeBus, FakePredictor, FakeQueue, Hospital, audit_rows, bearer

TEMPLATES = Path(__file__).parents[3] / "src" / "carecast" / "serving" / "ui" / "templates"
ORIGIN = "https://ehr.example.org"


def _responses(client: FlaskClient, hospital: Hospital, tokens: dict[str, str]) -> dict[str, Any]:
    a1 = hospital.uids["a1"]
    return {
        "livez": client.get("/livez"), "readyz": client.get("/readyz"),
        "patients": client.get("/api/v1/patients", headers=bearer(tokens["nurse"])),
        "patient": client.get(f"/api/v1/patients/{a1}", headers=bearer(tokens["nurse"])),
        "observations": client.get(f"/api/v1/patients/{a1}/observations", headers=bearer(tokens["nurse"])),
        "predictions": client.get(f"/api/v1/patients/{a1}/predictions", headers=bearer(tokens["nurse"])),
        "401": client.get("/api/v1/patients"), "404": client.get("/no/such/page"),
        "405": client.delete("/api/v1/patients"), "docs": client.get("/api/v1/docs"),
        "openapi": client.get("/api/v1/openapi.json"), "cds discovery": client.get("/cds-services"),
        "cds 401": client.post("/cds-services/carecast-deterioration", json={}),
        "ui login": client.get("/ui/login", headers=HTML), "ui signed out": client.get("/ui/ward", headers=HTML),
        "ui static": client.get("/ui/static/ui.css"),
    }


def test_every_kind_of_response_carries_the_headers(client: FlaskClient, hospital: Hospital,
                                                    tokens: dict[str, str]) -> None:
    for name, response in _responses(client, hospital, tokens).items():
        h = response.headers
        csp = h.get("Content-Security-Policy", "")
        assert "default-src 'none'" in csp and "script-src 'self';" in csp and "frame-ancestors 'none'" in csp, name
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, name
        assert h["X-Frame-Options"] == "DENY", name
        assert h["X-Content-Type-Options"] == "nosniff", name
        assert h["Referrer-Policy"] == "no-referrer", name
        assert "Strict-Transport-Security" not in h, name  # test environment: no HSTS
        assert "Access-Control-Allow-Origin" not in h, name
        if name != "ui static":
            assert h["Cache-Control"] == "no-store", name
        response.close()


def test_patient_data_is_never_cached_but_static_files_may_be(client: FlaskClient, hospital: Hospital,
                                                              tokens: dict[str, str]) -> None:
    answers = _responses(client, hospital, tokens)
    for name in ("patients", "patient", "observations", "predictions"):
        assert answers[name].status_code == 200 and answers[name].headers["Cache-Control"] == "no-store"
    assert answers["ui static"].headers.get("Cache-Control") != "no-store"
    for response in answers.values():
        response.close()


def test_the_docs_page_inline_style_is_allowed_by_its_hash_only(client: FlaskClient) -> None:
    page = client.get("/api/v1/docs")
    style = re.search(r"<style>(.*?)</style>", page.text, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in page.headers["Content-Security-Policy"]
    assert "sha256" not in client.get("/ui/login", headers=HTML).headers["Content-Security-Policy"]


def test_ui_templates_have_no_inline_script_or_style() -> None:
    """The CSP allows only the UI's own files: an inline script, handler or style attribute would break."""
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text(encoding="utf-8")
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag, f"{template.name}: inline <script>"
        assert not re.search(r"\son[a-z]+\s*=", text), f"{template.name}: inline event handler"
        assert not re.search(r"\sstyle\s*=", text) and "<style" not in text, f"{template.name}: inline style"
        assert "javascript:" not in text, template.name


def _app(settings: Settings, store: Store, **env: str) -> Flask:
    base = {"CARECAST_DATA_DIR": str(settings.data_dir), "CARECAST_ENV": "test", **env}
    return create_app(Settings.from_env(base), store=store, predictor=FakePredictor(), queue=FakeQueue(),
                      bus=FakeBus())


def test_hsts_only_outside_development_and_test(settings: Settings, store: Store) -> None:
    prod = _app(settings, store, CARECAST_ENV="production", CARECAST_DATA_KEY="x" * 44,
                CARECAST_SECRET_KEY="k" * 40).test_client()
    for path in ("/livez", "/api/v1/patients", "/ui/login", "/cds-services"):
        assert prod.get(path).headers["Strict-Transport-Security"].startswith("max-age=31536000"), path
    dev = _app(settings, store, CARECAST_ENV="development").test_client()
    assert "Strict-Transport-Security" not in dev.get("/livez").headers


def test_cors_origins_setting_is_strict() -> None:
    assert Settings.from_env({}).cors_origins == ()
    found = Settings.from_env({"CARECAST_CORS_ORIGINS": "https://EHR.example.org/, http://localhost:3000"})
    assert found.cors_origins == ("https://ehr.example.org", "http://localhost:3000")
    for bad in ("*", "https://*.example.org", "https://ehr.example.org/path", "ehr.example.org", "ftp://x"):
        with pytest.raises(ConfigError, match="CARECAST_CORS_ORIGINS"):
            Settings.from_env({"CARECAST_CORS_ORIGINS": bad})


def test_cors_without_an_allow_list_allows_no_origin(client: FlaskClient, tokens: dict[str, str]) -> None:
    answer = client.get("/api/v1/models", headers={**bearer(tokens["admin"]), "Origin": ORIGIN})
    assert answer.status_code == 200 and "Access-Control-Allow-Origin" not in answer.headers
    preflight = client.options("/api/v1/models", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 403 and "Access-Control-Allow-Origin" not in preflight.headers


def test_cors_allow_list(settings: Settings, store: Store, tokens: dict[str, str]) -> None:
    client = _app(settings, store, CARECAST_CORS_ORIGINS=ORIGIN).test_client()
    answer = client.get("/api/v1/models", headers={**bearer(tokens["admin"]), "Origin": ORIGIN})
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN and "Origin" in answer.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in answer.headers
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]
    other = client.get("/api/v1/models", headers={**bearer(tokens["admin"]), "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    ui = client.get("/ui/login", headers={**HTML, "Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in ui.headers  # the UI is same-origin only
    preflight = client.options("/api/v1/predict", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    cds = client.options("/cds-services/carecast-deterioration",
                         headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert cds.status_code == 204
    for refused in ({"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"},
                    {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "Cookie"},
                    {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}):
        answer = client.options("/api/v1/predict", headers=refused)
        assert answer.status_code == 403 and "Access-Control-Allow-Origin" not in answer.headers, refused
    assert client.options("/ui/login", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
                          ).status_code == 403


# -- size limits (413) of each family -------------------------------------------------------------------------

def test_each_family_refuses_oversized_bodies(client: FlaskClient, store: Store, tokens: dict[str, str]) -> None:
    big = b"x" * (21 * 1024 * 1024)
    assert client.post("/api/v1/ingest/ndjson", data=big, content_type="application/x-ndjson",
                       headers=bearer(tokens["nurse"])).status_code == 413
    assert client.post("/api/v1/predict", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                       content_type="application/json", headers=bearer(tokens["clinician"])).status_code == 413
    signer = ec_signer()
    register(store, signer)
    cds = client.post("/cds-services/carecast-deterioration", data=b"{" + b" " * (6 * 1024 * 1024) + b"}",
                      content_type="application/json", headers=bearer(make_token(signer)))
    assert cds.status_code == 413
    page = client.get("/ui/login", headers=HTML)
    ui = client.post("/ui/login", data={"username": "x", "password": "p" * (1024 * 1024),
                                        "csrf_token": csrf_of(page.text)}, headers=HTML)
    assert ui.status_code == 413 and ui.mimetype == "text/html"


# -- rate limits (429 + Retry-After) of each family ------------------------------------------------------------

def _tight(app: Flask) -> None:
    with app.app_context():
        services().limiter = TokenBucketLimiter(per_minute=60, burst=3)


def test_ui_pages_are_rate_limited_per_user(app: Flask, tokens: dict[str, str]) -> None:
    from tests.unit.serving.ui.conftest import sign_in

    browser = app.test_client()
    assert sign_in(browser, "test-admin").status_code == 302
    _tight(app)
    codes = [browser.get("/ui/admin/users", headers=HTML).status_code for _ in range(5)]
    assert codes[0] == 200 and codes[-1] == 429
    answer = browser.get("/ui/admin/users", headers=HTML)
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1


def test_cds_hooks_are_rate_limited_per_client_and_failures_per_address(app: Flask, client: FlaskClient,
                                                                        store: Store) -> None:
    signer = ec_signer()
    register(store, signer)
    _tight(app)
    body = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/1", "patientId": "x9"}}
    codes = [client.post("/cds-services/carecast-deterioration", json=body,
                         headers=bearer(make_token(signer))).status_code for _ in range(5)]
    assert codes[-1] == 429 and 429 not in codes[:3]
    _tight(app)
    before = len(audit_rows(store))
    bad = [client.post("/cds-services/carecast-deterioration", json=body,
                       headers=bearer("not.a.jwt")).status_code for _ in range(5)]
    assert bad[:3] == [401, 401, 401] and bad[-1] == 429
    assert len(audit_rows(store)) == before + 5  # every refusal audited, throttled or not


def test_health_is_not_rate_limited(app: Flask, client: FlaskClient) -> None:
    _tight(app)
    app.extensions[SIGN_IN_LIMITER] = TokenBucketLimiter(per_minute=60, burst=1)
    assert {client.get("/livez").status_code for _ in range(10)} == {200}
