"""deploy/gcp/relay: Cloud Healthcare API Pub/Sub push notifications -> FHIR batch Bundles that CareCast's
own decoder accepts, posted to /api/v1/ingest/fhir; what Pub/Sub is told to retry and what it may drop."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from types import ModuleType
from typing import Any

import pytest

from carecast.ingest.fhir import decode_bundle
from tests.unit.deploy import ROOT, app_routes


@pytest.fixture(scope="module")
def relay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("carecast_fhir_relay", ROOT / "deploy" / "gcp" / "relay" / "relay.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OBSERVATION = {
    "resourceType": "Observation", "id": "obs-relay-1", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "Patient/p-relay-1"}, "effectiveDateTime": "2026-01-05T10:00:00Z",
    "valueQuantity": {"value": 112, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
}


def push(resource: Any, action: str = "CreateResource", raw: bytes | None = None) -> dict[str, Any]:
    data = raw if raw is not None else json.dumps(resource).encode()
    return {"message": {"data": base64.b64encode(data).decode(), "messageId": "m-1",
                        "attributes": {"action": action, "resourceType": "Observation",
                                       "storeName": "projects/p/locations/l/datasets/d/fhirStores/s"}},
            "subscription": "projects/p/subscriptions/carecast-fhir-push"}


class FakeCareCast:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.calls.append((url, json.loads(body), headers))
        return self.status


def test_a_notification_becomes_a_bundle_carecast_decodes(relay: ModuleType, tmp_path: Any) -> None:
    api = FakeCareCast()
    assert relay.Relay("https://api.example/", "tok", api).handle(push(OBSERVATION)) == 204
    url, bundle, headers = api.calls[0]
    assert url == "https://api.example/api/v1/ingest/fhir"
    assert url.removeprefix("https://api.example") in app_routes(tmp_path)
    assert headers == {"Authorization": "Bearer tok", "Content-Type": "application/fhir+json"}
    assert bundle["type"] == "batch" and bundle["entry"][0]["resource"] == OBSERVATION
    unit = decode_bundle(bundle, "relay")
    assert not unit.rejections, unit.rejections
    assert len(unit.records) == 1


@pytest.mark.parametrize(("status", "answer"), [(200, 204), (422, 204), (429, 503), (500, 503), (599, 503)])
def test_pubsub_retries_only_what_may_succeed_later(relay: ModuleType, status: int, answer: int) -> None:
    assert relay.Relay("https://api.example", "tok", FakeCareCast(status)).handle(push(OBSERVATION)) == answer


@pytest.mark.parametrize("envelope", [
    push(OBSERVATION, action="DeleteResource"),
    push(None, raw=b"projects/p/locations/l/datasets/d/fhirStores/s/fhir/Observation/1"),  # no full resource
    push({"no": "resourceType"}),
])
def test_nothing_to_store_is_acknowledged_without_calling_carecast(relay: ModuleType,
                                                                  envelope: dict[str, Any]) -> None:
    api = FakeCareCast()
    assert relay.Relay("https://api.example", "tok", api).handle(envelope) == 204
    assert api.calls == []


def test_wsgi_answers_and_never_logs_resource_contents(relay: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    api = FakeCareCast(500)
    app = relay.Relay("https://api.example", "tok", api)
    statuses: list[str] = []
    body = json.dumps(push(OBSERVATION)).encode()
    environ = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    with caplog.at_level("INFO", logger="carecast.relay"):
        app(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["503 Service Unavailable"]
    assert "p-relay-1" not in caplog.text and "obs-relay-1" not in caplog.text and "m-1" in caplog.text
    garbage = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "3", "wsgi.input": io.BytesIO(b"{x]")}
    app(garbage, lambda status, headers: statuses.append(status))
    app({"REQUEST_METHOD": "GET"}, lambda status, headers: statuses.append(status))
    assert statuses[1:] == ["400 Bad Request", "405 Method Not Allowed"]
