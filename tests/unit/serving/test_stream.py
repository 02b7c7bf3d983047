"""Live updates: the DatabaseBus sees predictions stored through another engine (as another process would
store them), and `GET /api/v1/stream` sends each one the caller may see, as Server-Sent Events, over a real
server on 127.0.0.1: unit filtering and break-glass, Last-Event-ID replay, one audit row, heartbeats, and
prompt endings on server shutdown, a revoked token or too many streams."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, insert, select, update
from werkzeug.serving import BaseWSGIServer, make_server

from carecast.config import Settings
from carecast.models.registry import Registry
from carecast.scoring.events import DatabaseBus, InProcessBus, RiskEvent, StoredRiskEvent
from carecast.security.access import open_break_glass
from carecast.security.permissions import Principal
from carecast.serving import create_app, stream
from carecast.serving.app import shutdown
from carecast.serving.stream import hub_of
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.db import make_engine

from .conftest import FakePredictor, FakeQueue, Hospital, audit_rows

TASK = "deterioration_24h"
WAIT_S = 5.0


def add_prediction(engine: Engine, patient_id: int, risk: float, *, shadow: bool = False, row_id: int | None = None,
                   at: datetime | None = None) -> int:
    """A stored prediction on the patient's current stay, as the scoring worker would store it."""
    with engine.begin() as conn:
        encounter_id = conn.execute(select(S.Encounter.id).where(S.Encounter.patient_id == patient_id)
                                    .order_by(S.Encounter.admitted_at.desc())).scalars().first()
        values: dict[str, Any] = {
            "patient_id": patient_id, "encounter_id": encounter_id, "task": TASK, "model_version": "v2",
            "risk": risk, "band": "high" if risk >= 0.3 else "low", "news2": 4, "factors": "[]",
            "data_time": at or datetime.now(UTC) + timedelta(microseconds=int(risk * 1e6)),
            "computed_at": datetime.now(UTC), "shadow": shadow}
        if row_id is not None:
            values["id"] = row_id
        return int(conn.execute(insert(S.table(S.Prediction)).values(**values)
                                .returning(S.table(S.Prediction).c.id)).scalar_one())


@pytest.fixture
def other_engine(database_url: str) -> Iterator[Engine]:
    """A second engine on the same database: another process's view."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


# -- the bus -------------------------------------------------------------------------------------------------

def test_database_bus_sees_rows_stored_by_another_engine(store: Store, hospital: Hospital,
                                                         other_engine: Engine) -> None:
    bus = DatabaseBus(store.engine, poll_s=0.05)
    sub = bus.subscribe()
    try:
        assert sub.get(0.2) is None  # rows stored before the subscription are not news
        shadow_id = add_prediction(other_engine, hospital.ids["a1"], 0.7, shadow=True)
        first = add_prediction(other_engine, hospital.ids["a1"], 0.4)
        second = add_prediction(other_engine, hospital.ids["b1"], 0.2)
        got = [sub.get(WAIT_S), sub.get(WAIT_S)]
        assert all(isinstance(e, StoredRiskEvent) for e in got)
        assert [(e.prediction_id, e.patient_uid, e.unit) for e in got if isinstance(e, StoredRiskEvent)] == [
            (first, hospital.uids["a1"], "Ward A"), (second, hospital.uids["b1"], "Ward B")]
        assert shadow_id < first and sub.get(0.3) is None  # the shadow score was not announced
        e = got[0]
        assert e is not None and e.task == TASK and e.risk == 0.4 and e.band == "high" and e.news2 == 4
        assert set(e.to_dict()) == {"patient_uid", "unit", "task", "risk", "band", "model_version", "data_time",
                                    "news2"}
        assert RiskEvent.from_dict(e.to_dict()).patient_uid == hospital.uids["a1"]

        # An id committed after a higher one (PostgreSQL hands out ids before commit) is still delivered.
        late, early = second + 3, second + 2
        add_prediction(other_engine, hospital.ids["a2"], 0.5, row_id=late)
        assert isinstance(got_late := sub.get(WAIT_S), StoredRiskEvent) and got_late.prediction_id == late
        add_prediction(other_engine, hospital.ids["a2"], 0.6, row_id=early)
        assert isinstance(got_early := sub.get(WAIT_S), StoredRiskEvent) and got_early.prediction_id == early
        assert sub.get(0.3) is None
        assert bus.read_since(first)[0].prediction_id == second
        assert bus.head() == late
    finally:
        bus.close()
    assert sub.closed


# -- a real server -------------------------------------------------------------------------------------------

@dataclass
class Server:
    app: Flask
    port: int
    connections: list[http.client.HTTPConnection] = field(default_factory=list)

    def open(self, token: str, last_event_id: str | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_S)
        self.connections.append(conn)
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        conn.request("GET", "/api/v1/stream", headers=headers)
        return conn.getresponse()


def read_event(response: http.client.HTTPResponse, *, comments: bool = False) -> dict[str, str] | None:
    """The next event (its fields), or the next comment with `comments`; None at the end of the stream."""
    fields: dict[str, str] = {}
    while True:
        line = response.readline().decode()
        if line == "":
            return None
        line = line.rstrip("\n")
        if line == "":
            if fields:
                return fields
            continue
        name, _, value = line.partition(":")
        if name == "":
            if comments:
                return {"comment": value.strip()}
            continue
        fields[name] = value.removeprefix(" ")


def risk_event(response: http.client.HTTPResponse) -> dict[str, Any]:
    found = read_event(response)
    assert found is not None, "the stream ended"
    while found.get("event") != RiskEvent.kind:
        found = read_event(response)
        assert found is not None, "the stream ended"
    return {"id": int(found["id"]), **json.loads(found["data"])}


def serve(app: Flask) -> Iterator[Server]:
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    found = Server(app=app, port=server.server_port)
    try:
        yield found
    finally:
        shutdown(app, timeout=1)
        for conn in found.connections:
            conn.close()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def live_app(settings: Settings, store: Store, registry: Registry, hospital: Hospital) -> Flask:
    return create_app(settings, store=store, registry=registry, predictor=FakePredictor(), queue=FakeQueue(),
                      bus=DatabaseBus(store.engine, poll_s=0.05))


@pytest.fixture
def server(live_app: Flask) -> Iterator[Server]:
    yield from serve(live_app)


def test_stream_sends_what_the_caller_may_see(server: Server, store: Store, hospital: Hospital,
                                              tokens: dict[str, str], other_engine: Engine) -> None:
    nurse = server.open(tokens["nurse"])  # Ward A
    scientist = server.open(tokens["data_scientist"])  # every unit
    assert nurse.status == 200 and nurse.getheader("Content-Type", "").startswith("text/event-stream")
    assert nurse.getheader("Cache-Control") == "no-store"
    assert read_event(nurse, comments=True) == {"comment": "connected"}
    assert read_event(scientist, comments=True) == {"comment": "connected"}

    ward_b = add_prediction(other_engine, hospital.ids["b1"], 0.2)
    ward_a = add_prediction(other_engine, hospital.ids["a1"], 0.45)
    got = risk_event(nurse)
    assert got == {"id": ward_a, "patient_uid": hospital.uids["a1"], "unit": "Ward A", "task": TASK, "risk": 0.45,
                   "band": "high", "model_version": "v2", "data_time": got["data_time"], "news2": 4}
    assert [risk_event(scientist)["id"], risk_event(scientist)["id"]] == [ward_b, ward_a]

    rows = [r for r in audit_rows(store) if r.action == stream.STREAM_ACTION]
    assert [(r.outcome, r.patient_uid) for r in rows] == [("success", None), ("success", None)]


def test_break_glass_opens_a_patient_of_another_unit(server: Server, store: Store, hospital: Hospital,
                                                     tokens: dict[str, str], other_engine: Engine) -> None:
    with store.engine.connect() as conn:
        user_id = conn.execute(select(S.User.id).where(S.User.username == "test-clinician")).scalar_one()
    who = Principal(user_id=user_id, username="test-clinician", role="clinician", units=frozenset({"Ward A"}),
                    scopes=None, via="token")
    open_break_glass(store.engine, store.keyring, who, hospital.ids["b1"], "rapid response call, covering",
                     minutes=5)
    clinician = server.open(tokens["clinician"])
    ward_b = add_prediction(other_engine, hospital.ids["b1"], 0.3)
    assert risk_event(clinician)["id"] == ward_b


def test_last_event_id_replays_what_was_missed(server: Server, hospital: Hospital, tokens: dict[str, str],
                                               other_engine: Engine) -> None:
    seen = add_prediction(other_engine, hospital.ids["a1"], 0.31)
    missed_b = add_prediction(other_engine, hospital.ids["b1"], 0.32)
    missed_a = add_prediction(other_engine, hospital.ids["a2"], 0.33)
    nurse = server.open(tokens["nurse"], last_event_id=str(seen))
    assert risk_event(nurse)["id"] == missed_a  # Ward B's row is not the nurse's to see
    live = add_prediction(other_engine, hospital.ids["a1"], 0.34)
    assert risk_event(nurse)["id"] == live
    assert missed_b < missed_a

    scientist = server.open(tokens["data_scientist"], last_event_id=str(seen))
    assert [risk_event(scientist)["id"] for _ in range(3)] == [missed_b, missed_a, live]

    # An id that is not ours is ignored: the stream starts from now.
    fresh = server.open(tokens["data_scientist"], last_event_id="not-an-id")
    assert read_event(fresh, comments=True) == {"comment": "connected"}
    newest = add_prediction(other_engine, hospital.ids["b1"], 0.35)
    assert risk_event(fresh)["id"] == newest


def test_replay_is_bounded_then_asks_for_a_reload(server: Server, hospital: Hospital, tokens: dict[str, str],
                                                  other_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "MAX_REPLAY", 2)
    start = add_prediction(other_engine, hospital.ids["a1"], 0.1)
    for i in range(4):
        add_prediction(other_engine, hospital.ids["a2"], 0.2 + i / 100)
    scientist = server.open(tokens["data_scientist"], last_event_id=str(start))
    assert [risk_event(scientist)["id"] for _ in range(2)] == [start + 1, start + 2]
    assert read_event(scientist) == {"event": "resync", "data": "{}"}
    after = add_prediction(other_engine, hospital.ids["a1"], 0.5)
    assert risk_event(scientist)["id"] == after


def test_events_without_ids_are_read_back_from_the_table(settings: Settings, store: Store, registry: Registry,
                                                         hospital: Hospital, tokens: dict[str, str],
                                                         other_engine: Engine) -> None:
    bus = InProcessBus()  # as the Redis bus: events carry no row id
    app = create_app(settings, store=store, registry=registry, predictor=FakePredictor(), queue=FakeQueue(), bus=bus)
    for server in serve(app):
        nurse = server.open(tokens["nurse"])
        assert read_event(nurse, comments=True) == {"comment": "connected"}
        row = add_prediction(other_engine, hospital.ids["a2"], 0.6)
        bus.publish(RiskEvent(patient_uid=hospital.uids["a2"], unit="Ward A", task=TASK, risk=0.6, band="high",
                              model_version="v2", data_time=datetime.now(UTC)))
        assert risk_event(nurse)["id"] == row


def test_heartbeat_and_prompt_end_on_shutdown(server: Server, tokens: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "HEARTBEAT_S", 0.2)
    response = server.open(tokens["data_scientist"])
    assert read_event(response, comments=True) == {"comment": "connected"}
    assert read_event(response, comments=True) == {"comment": "heartbeat"}
    hub = hub_of(server.app)
    assert hub is not None and hub.active == 1
    began = datetime.now(UTC)
    hub.stop()
    assert read_event(response) is None  # the server ended the response
    assert datetime.now(UTC) - began < timedelta(seconds=2)
    late = server.open(tokens["data_scientist"])
    assert late.status == 503 and late.getheader("Retry-After")


def test_revoked_token_ends_the_stream(server: Server, store: Store, tokens: dict[str, str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "RECHECK_S", 0.2)
    response = server.open(tokens["nurse"])
    assert read_event(response, comments=True) == {"comment": "connected"}
    with store.engine.begin() as conn:
        conn.execute(update(S.ApiToken).values(revoked_at=datetime.now(UTC)))
    assert read_event(response) is None


def test_open_streams_are_capped(server: Server, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "MAX_STREAMS", 1)
    first = server.open(tokens["nurse"])
    assert read_event(first, comments=True) == {"comment": "connected"}
    second = server.open(tokens["nurse"])
    assert second.status == 503 and second.getheader("Retry-After")
    body = json.loads(second.read())
    assert body["error"]["code"] == "service_unavailable"
