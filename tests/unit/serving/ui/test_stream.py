"""The session-authenticated event stream of the web pages: the same events as the API's stream, filtered to
the user's units, audited once, never counted as activity, and ended with the session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from carecast.config import Settings
from carecast.models.registry import Registry
from carecast.scoring.events import DatabaseBus
from carecast.serving import create_app
from carecast.serving.app import shutdown
from carecast.serving.ui import clinical
from carecast.store import Store
from tests.unit.serving.conftest import FakePredictor, FakeQueue, Hospital, audit_rows
from tests.unit.serving.test_stream import add_prediction

from .conftest import sign_in


@pytest.fixture
def live_app(settings: Settings, store: Store, registry: Registry, hospital: Hospital,
             tokens: dict[str, str]) -> Iterator[Flask]:
    app = create_app(settings, store=store, registry=registry, predictor=FakePredictor(), queue=FakeQueue(),
                     bus=DatabaseBus(store.engine, poll_s=0.05))
    yield app
    shutdown(app, timeout=1)


def _events(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines() if ": " in line
                          and not line.startswith(":"))
            if fields.get("event") == "risk-updated":
                yield {"id": int(fields["id"]), **json.loads(fields["data"])}


def test_session_stream_sends_the_users_units_only(live_app: Flask, store: Store, hospital: Hospital) -> None:
    client = live_app.test_client()
    assert sign_in(client, "test-nurse").status_code == 302  # Ward A
    with client.session_transaction() as sess:
        seen = sess["seen"]
    answer = client.get("/ui/stream", headers={"Accept": "text/event-stream"}, buffered=False)
    assert answer.status_code == 200 and answer.mimetype == "text/event-stream"
    chunks = iter(answer.response)
    assert next(chunks).startswith(b"retry:")
    ward_b = add_prediction(store.engine, hospital.ids["b1"], 0.2)
    ward_a = add_prediction(store.engine, hospital.ids["a1"], 0.45)
    event = next(_events(chunks))
    assert (event["id"], event["patient_uid"], event["risk"]) == (ward_a, hospital.uids["a1"], 0.45)
    assert ward_b < ward_a
    answer.close()
    assert [r.action for r in audit_rows(store)].count("prediction:stream") == 1
    with client.session_transaction() as sess:
        assert sess["seen"] == seen  # an open stream is not activity


def test_session_stream_ends_when_the_session_would_be_idle(live_app: Flask, store: Store, hospital: Hospital,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    client = live_app.test_client()
    sign_in(client, "test-nurse")
    monkeypatch.setattr(clinical, "remaining_seconds", lambda: 0.0)  # the session's idle time is up
    monkeypatch.setattr("carecast.serving.stream.RECHECK_S", 0.1)
    answer = client.get("/ui/stream", headers={"Accept": "text/event-stream"}, buffered=False)
    chunks = list(answer.response)  # ends by itself at the first re-check
    assert chunks[0].startswith(b"retry:")
