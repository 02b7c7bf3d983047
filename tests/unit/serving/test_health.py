"""Liveness and readiness: public, never audited; not ready without a database or a model."""

from __future__ import annotations

from flask.testing import FlaskClient

from carecast.store import Store

from .conftest import FakePredictor, audit_count


def test_livez_and_readyz_when_ready(client: FlaskClient, store: Store) -> None:
    assert client.get("/livez").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"status": "ready", "checks": {"database": "ok", "model": "ok"}}
    assert audit_count(store) == 0


def test_readyz_is_503_without_a_model(client: FlaskClient, store: Store, predictor: FakePredictor) -> None:
    predictor.loaded = False
    response = client.get("/readyz")
    assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
    assert response.json == {"status": "not ready", "checks": {"database": "ok", "model": "unavailable"}}
    assert client.get("/livez").status_code == 200
    assert audit_count(store) == 0
