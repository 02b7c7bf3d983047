"""Bad input and faults: one JSON error shape, the right status, no patient value in any body or log line."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient

from carecast.config import Settings
from carecast.crypto import Keyring
from carecast.serving import create_app
from carecast.serving.api_v1 import MAX_INGEST_BYTES
from carecast.store import Store
from carecast.store.db import make_engine
from tests import factories as F

from .conftest import FakePredictor, FakeQueue, Hospital, assert_no_secrets, audit_count, bearer


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.json
    assert body is not None and set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(error["fields"], list)
    assert "Traceback" not in response.get_data(as_text=True)
    assert_no_secrets(response.get_data(as_text=True))
    return dict(error)


def test_wrong_content_type_is_415(client: FlaskClient, hospital: Hospital, tokens: dict[str, str]) -> None:
    bundle = orjson.dumps(F.bundle([F.patient("x1")]))
    error = _error(client.post("/api/v1/ingest/fhir", data=bundle, content_type="text/plain",
                               headers=bearer(tokens["admin"])), 415, "unsupported_media_type")
    assert error["fields"] == [{"where": "header", "field": "Content-Type", "reason": "not an accepted content type"}]
    _error(client.post("/api/v1/predict", data=b"task=x", content_type="application/x-www-form-urlencoded",
                       headers=bearer(tokens["clinician"])), 415, "unsupported_media_type")


def test_oversized_bodies_are_413(client: FlaskClient, hospital: Hospital, tokens: dict[str, str]) -> None:
    big = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    _error(client.post("/api/v1/predict", data=big, content_type="application/json",
                       headers=bearer(tokens["clinician"])), 413, "payload_too_large")
    readings = b'{"x": 1}\n' * (5 * 1024 * 1024 // 9 + 10)
    _error(client.post("/api/v1/ingest/wearables", data=readings, content_type="application/x-ndjson",
                       headers=bearer(tokens["admin"])), 413, "payload_too_large")
    too_big = b"[" + b" " * MAX_INGEST_BYTES + b"]"
    _error(client.post("/api/v1/ingest/fhir", data=too_big, content_type="application/fhir+json",
                       headers=bearer(tokens["admin"])), 413, "payload_too_large")


def test_a_body_is_read_by_its_length_or_to_its_end(client: FlaskClient, hospital: Hospital,
                                                   tokens: dict[str, str]) -> None:
    body = orjson.dumps({"task": "deterioration_24h", "features": {"heart_rate_last_4h": 130}})
    headers = {**bearer(tokens["data_scientist"]), "Content-Type": "application/json"}
    assert client.post("/api/v1/predict", data=body, headers=headers).status_code == 200
    # a Content-Length the body falls short of (the client went away): 400, not a half-read body
    error = _error(client.post("/api/v1/predict", data=body, headers=headers,
                               environ_overrides={"CONTENT_LENGTH": str(len(body) + 50)}), 400, "bad_request")
    assert error["fields"] == [{"where": "header", "field": "Content-Length", "reason": "more than the body's bytes"}]
    # chunked (no length; the server marks the input terminated): read to its end, and limited as it is read
    chunked = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    assert client.post("/api/v1/predict", data=body, headers=headers, environ_overrides=chunked).status_code == 200
    big = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    _error(client.post("/api/v1/predict", data=big, headers=headers, environ_overrides=chunked), 413,
           "payload_too_large")


def test_malformed_json_is_400_and_schema_errors_422(client: FlaskClient, hospital: Hospital,
                                                    tokens: dict[str, str]) -> None:
    secret = F.SECRET_IDENTIFIERS["family"]
    error = _error(client.post("/api/v1/ingest/fhir", data=b'{"resourceType": "Bundle", "entry": [' + secret.encode(),
                               content_type="application/fhir+json", headers=bearer(tokens["admin"])),
                   400, "bad_request")
    assert error["fields"] == [{"where": "body", "field": "(body)", "reason": "not valid JSON"}]
    error = _error(client.post("/api/v1/ingest/fhir", json=F.patient("x1"), headers=bearer(tokens["admin"])),
                   422, "unprocessable")
    assert error["fields"][0]["field"] == "resourceType"
    error = _error(client.post("/api/v1/predict", json={"task": 7, "features": {"age": secret}, "extra": secret},
                               headers=bearer(tokens["clinician"])), 422, "unprocessable")
    assert {(f["field"], f["reason"]) for f in error["fields"]} == {
        ("task", "expected a string"), ("extra", "unknown field")}


def test_bundle_with_bad_entries_lists_fields_without_values(client: FlaskClient, hospital: Hospital,
                                                             tokens: dict[str, str]) -> None:
    bad = F.patient("x9", gender=F.SECRET_IDENTIFIERS["given"])
    bad_vital = F.vital("ox", "8867-4", 99999, "/min", pid="a1", eid="ea1")
    error = _error(client.post("/api/v1/ingest/fhir", json=F.bundle([bad, bad_vital], "batch"),
                               headers=bearer(tokens["nurse"])), 422, "unprocessable")
    assert [(f["where"], f["field"]) for f in error["fields"]] == [
        ("bundle entry[0]", "gender"), ("bundle entry[1]", "valueQuantity.value")]
    assert all(f["reason"] for f in error["fields"])


def test_unknown_patient_route_and_method(client: FlaskClient, hospital: Hospital, tokens: dict[str, str]) -> None:
    nurse = bearer(tokens["nurse"])
    _error(client.get("/api/v1/patients/00000000-0000-0000-0000-000000000000", headers=nurse), 404, "not_found")
    _error(client.get("/api/v1/patients/" + F.SECRET_IDENTIFIERS["mrn"] + "!", headers=nurse), 404, "not_found")
    _error(client.get("/api/v1/nowhere", headers=nurse), 404, "not_found")
    response = client.delete(f"/api/v1/patients/{hospital.uids['a1']}", headers=nurse)
    _error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]
    error = _error(client.get("/api/v1/patients?limit=many", headers=nurse), 400, "bad_request")
    assert error["fields"] == [{"where": "query", "field": "limit", "reason": "expected an integer"}]


def test_database_unreachable_is_503_with_retry_after(settings: Settings, keyring: Keyring) -> None:
    down = Store(engine=make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2"),
                 keyring=keyring)
    app = create_app(settings, store=down, predictor=FakePredictor(), queue=FakeQueue(), bus=None)
    with app.test_client() as client:
        response = client.get("/api/v1/patients", headers=bearer("cc_whatever"))
        error = _error(response, 503, "service_unavailable")
        assert response.headers["Retry-After"].isdigit()
        assert "database" in error["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"].isdigit()
    down.close()


def test_unexpected_error_is_500_with_an_error_id_and_no_values(client: FlaskClient, hospital: Hospital,
                                                                tokens: dict[str, str], predictor: FakePredictor,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    secret = F.SECRET_IDENTIFIERS["family"]

    def explode(*_: Any, **__: Any) -> Any:
        raise ValueError(f"cannot score {secret}")

    monkeypatch.setattr(predictor, "predict", explode)
    with caplog.at_level(logging.ERROR, logger="carecast.serving"):
        response = client.post("/api/v1/predict", json={"task": "deterioration_24h", "features": {}},
                               headers=bearer(tokens["clinician"]))
    error = _error(response, 500, "internal_error")
    assert len(error["error_id"]) == 16
    assert secret not in caplog.text and error["error_id"] in caplog.text
    assert "explode" in caplog.text and "ValueError" in caplog.text  # the stack frames are logged


def test_request_id_is_kept_only_when_safe(client: FlaskClient, store: Store) -> None:
    kept = client.get("/livez", headers={"X-Request-ID": "abc-123.DEF"})
    assert kept.headers["X-Request-ID"] == "abc-123.DEF"
    replaced = client.get("/livez", headers={"X-Request-ID": "<script> " + "z" * 100})
    assert len(replaced.headers["X-Request-ID"]) == 32
    assert audit_count(store) == 0
