"""Live updates end to end on the embedded default (SQLite, the database queue, the DatabaseBus): a real
server thread with its embedded scoring worker and a trained model. A new vital sign posted to the API is
re-scored, stored and pushed to an open Server-Sent Events stream within 2 s (the issue's target is 1 s;
the measured latency is printed). The synthetic hospital streamed live (`carecast.jobs.live`) stores what
its files would, and its patients' risks reach the stream too."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from sqlalchemy import func, select
from werkzeug.serving import make_server

from carecast.config import Settings
from carecast.crypto import Keyring
from carecast.jobs.ingest import ingest_paths
from carecast.jobs.live import queue_in_house, resume_point, stream_hospital
from carecast.jobs.worker import WorkerThread
from carecast.scoring.queue import DatabaseQueue
from carecast.security.tokens import issue_token
from carecast.security.users import create_user
from carecast.serving import create_app
from carecast.serving.app import WORKER_EXTENSION, shutdown
from carecast.simulate import SimulationConfig, simulate
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.db import make_engine
from carecast.store.migrate import upgrade
from tests import factories as F
from tests.unit.scoring import TASK, TrainedModels, ingest, registry_copy, small_hospital

# Arrival, not speed, is asserted here (shared machines are noisy); the latency is printed, and the 1 s
# target belongs to the benchmarks.
ARRIVAL_LIMIT_S = 15.0
TARGET_S = 1.0
PASSWORD = "correct horse battery staple"


@dataclass
class Live:
    app: Flask
    store: Store
    port: int

    def stream(self, token: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/api/v1/stream", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.readline().startswith(b"retry:") and response.readline() == b": connected\n"
        return response

    def post(self, path: str, token: str, body: dict[str, Any]) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", path, body=orjson.dumps(body), headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200, data[:300]
            return json.loads(data)
        finally:
            conn.close()


def next_risk_event(response: http.client.HTTPResponse) -> dict[str, Any]:
    """The data of the next risk-updated event (heartbeats and other events skipped)."""
    fields: dict[str, str] = {}
    while True:
        line = response.readline().decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        elif fields.get("event") == "risk-updated":
            return {"id": int(fields["id"]), **json.loads(fields["data"])}
        else:
            fields = {}


@pytest.fixture
def live(models: TrainedModels, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The embedded default: SQLite store with a small hospital, the API on 127.0.0.1 with its worker."""
    engine = make_engine(f"sqlite:///{tmp_path / 'carecast.db'}")
    upgrade(engine)
    store = Store(engine=engine, keyring=Keyring.generate())
    ingest(store, small_hospital(tmp_path_factory))
    settings = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_ENV": "test"})
    app = create_app(settings, store=store, registry=registry_copy(models, tmp_path / "models"),
                     worker_factory=WorkerThread)
    assert isinstance(app.extensions[WORKER_EXTENSION], WorkerThread)
    queue = DatabaseQueue(engine)
    queue_in_house(store, queue)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while queue.depth() and time.monotonic() < deadline:  # the in-house patients' first scores
            time.sleep(0.1)
        assert queue.depth() == 0
        yield Live(app=app, store=store, port=server.server_port)
    finally:
        shutdown(app)
        server.shutdown()
        server.server_close()
        thread.join(5)
        engine.dispose()


def _token(store: Store, role: str, units: tuple[str, ...] = ()) -> str:
    user_id = create_user(store.engine, f"live-{role}", PASSWORD, role, units)
    return issue_token(store.engine, user_id, "live test", [], ttl_hours=1)


def _in_house_patient(store: Store, hospital: Path) -> tuple[str, str, str, datetime]:
    """An admitted patient of the simulated files: FHIR id, public uid, unit and latest observation time."""
    for line in (hospital / "Encounter.ndjson").read_bytes().splitlines():
        enc = orjson.loads(line)
        if enc["status"] != "in-progress" or enc["class"]["code"] != "IMP":
            continue
        fhir_id = enc["subject"]["reference"].removeprefix("Patient/")
        key = store.keyring.record_key(f"Patient/{fhir_id}")
        with store.engine.connect() as conn:
            pid, uid = conn.execute(select(S.Patient.id, S.Patient.uid).where(S.Patient.source_key == key)).one()
            unit, latest = conn.execute(
                select(S.Encounter.unit, func.max(S.Observation.effective_at))
                .join(S.Observation, S.Observation.patient_id == S.Encounter.patient_id)
                .where(S.Encounter.patient_id == pid, S.Encounter.discharged_at.is_(None))
                .group_by(S.Encounter.unit)).one()
        return fhir_id, uid, unit, latest
    raise AssertionError("the small hospital has no patient in house")


def test_new_reading_is_scored_stored_and_pushed(live: Live, tmp_path_factory: pytest.TempPathFactory) -> None:
    fhir_id, uid, unit, latest = _in_house_patient(live.store, small_hospital(tmp_path_factory))
    nurse = _token(live.store, "nurse", (unit,))  # may ingest, and sees her unit's risks
    stream = live.stream(nurse)
    when = latest + timedelta(minutes=7)
    vital = F.vital("live-hr-1", "8867-4", 134, "/min", pid=fhir_id, eid=None,
                    when=when.isoformat().replace("+00:00", "Z"))

    began = time.perf_counter()
    result = live.post("/api/v1/ingest/fhir", nurse, F.bundle([vital]))
    posted = time.perf_counter()
    event = next_risk_event(stream)
    while not (event["patient_uid"] == uid and event["data_time"] == when.isoformat()):
        event = next_risk_event(stream)
    latency = time.perf_counter() - began
    stream.close()

    print(f"\nnew reading -> pushed risk: {latency * 1000:.0f} ms (the POST itself {(posted - began) * 1000:.0f} ms; "
          f"target {TARGET_S * 1000:.0f} ms)")
    assert result["inserted"] == 1
    assert event["unit"] == unit and event["task"] == TASK and 0.0 <= event["risk"] <= 1.0
    with live.store.engine.connect() as conn:
        stored = conn.execute(select(S.Prediction.id, S.Prediction.risk).join(S.Patient).where(
            S.Patient.uid == uid, S.Prediction.data_time == when, S.Prediction.task == TASK)).one()
    assert (stored.id, stored.risk) == (event["id"], event["risk"])
    assert latency < ARRIVAL_LIMIT_S


def test_live_feed_reaches_the_stream(live: Live) -> None:
    scientist = _token(live.store, "data_scientist")
    with live.store.engine.connect() as conn:
        before = set(conn.execute(select(S.Patient.uid)).scalars())
    stream = live.stream(scientist)
    config = SimulationConfig(seed=23, patients=3, days=0.5, wearable_share=0.5,
                              start=datetime(2026, 1, 20, tzinfo=UTC))
    stop = threading.Event()
    result: dict[str, Any] = {}
    feed = threading.Thread(target=lambda: result.update(stats=stream_hospital(
        live.store, config, speed=6 * 3600.0, start_at=config.start, stop=stop, flush_s=0.2)))
    feed.start()
    try:
        event = next_risk_event(stream)  # a patient of the live feed, scored by the embedded worker
        assert event["patient_uid"] not in before and event["task"] == TASK
    finally:
        stop.set()
        feed.join(30)
        stream.close()
    stats = result["stats"]
    assert stats.batches >= 1 and stats.rejected == 0 and stats.patients_queued >= 1


def test_live_feed_stores_what_the_files_hold(store: Store, tmp_path: Path) -> None:
    config = SimulationConfig(seed=31, patients=12, days=1.5, wearable_share=0.3)
    stats = stream_hospital(store, config, speed=1e7, start_at=config.start, stop=threading.Event())
    assert stats.rejected == 0 and stats.events > 0 and stats.patients_queued == 12
    simulate(config, tmp_path / "sim")
    engine = make_engine(f"sqlite:///{tmp_path / 'files.db'}")
    upgrade(engine)
    from_files = Store(engine=engine, keyring=store.keyring)
    ingest_paths([tmp_path / "sim"], from_files.writer())
    tables = (S.Patient, S.Encounter, S.Observation, S.Condition, S.ImagingStudy, S.Outcome)

    def counts(s: Store) -> dict[str, int]:
        with s.engine.connect() as conn:
            return {t.__tablename__: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in tables}

    assert counts(store) == counts(from_files)
    assert DatabaseQueue(store.engine).depth() == 12
    assert resume_point(store, config) is not None
    # A second run that resumes near the end writes nothing new.
    again = stream_hospital(store, config, speed=1e7, start_at=config.start, stop=threading.Event(),
                            skip_before=resume_point(store, config) - timedelta(hours=2))
    assert again.skipped_events > 0 and again.inserted == 0
    engine.dispose()


def test_run_and_live_commands(models: TrainedModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`carecast run` on an empty data directory: history ingested and scored, the first admin created with
    a generated password shown once, a working token, the feed started and stopped around the server (both
    stubbed here); then `carecast live` on its own."""
    import re
    import signal
    import subprocess

    from click.testing import CliRunner

    from carecast.cli import main
    from carecast.jobs import live as live_module
    from carecast.security.tokens import resolve_token
    from carecast.security.users import authenticate
    from carecast.serving import wsgi

    monkeypatch.setattr(live_module, "HISTORY", SimulationConfig(seed=11, patients=8, days=2, wearable_share=0.2))
    registry_copy(models, tmp_path / "models")  # a champion already: `run` does not train
    env = {"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_ENV": "test",
           "CARECAST_MODEL_REGISTRY": str(tmp_path / "models")}
    served: list[dict[str, Any]] = []
    monkeypatch.setattr(wsgi, "serve", lambda **options: served.append(options))
    prepared: list[Path] = []  # this process has its metrics already (single-process): only check the call
    monkeypatch.setattr(wsgi, "prepare_metrics_dir", prepared.append)
    children: list[Any] = []

    class Child:
        def __init__(self, args: list[str]) -> None:
            self.args, self.stopped = args, False
            children.append(self)

        def poll(self) -> int | None:
            return 0 if self.stopped else None

        def terminate(self) -> None:
            self.stopped = True

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Child)

    first = CliRunner().invoke(main, ["run", "--port", "8123", "--speed", "120"], env=env)
    assert first.exit_code == 0, first.output
    password = re.search(r"first admin user: admin  password: (\S+)", first.output)
    token = re.search(r"(cc_[A-Za-z0-9_\-]+)", first.output)
    assert password and token and len(password.group(1)) >= 20
    assert "http://127.0.0.1:8123/api/v1/stream" in first.output
    assert served and served[0]["port"] == 8123 and callable(served[0]["app_factory"])
    assert prepared and prepared[0].name == "serve-8123"  # before anything else: see test_observability
    assert children[0].args[-3:] == ["live", "--speed", "120"] and children[0].stopped
    store = Store.open(Settings.from_env(env))
    try:
        assert authenticate(store.engine, "admin", password.group(1)) is not None
        who = resolve_token(store.engine, token.group(1))
        assert who is not None and who.role == "admin"
        assert DatabaseQueue(store.engine).depth() > 0  # the in-house patients, waiting for a scoring worker
    finally:
        store.close()

    again = CliRunner().invoke(main, ["run"], env=env)
    assert again.exit_code == 0, again.output
    assert "password" not in again.output and "simulating" not in again.output
    assert password.group(1) not in again.output

    before = signal.getsignal(signal.SIGINT)
    feed = CliRunner().invoke(main, ["live", "--days", "0.1", "--speed", "1000000"], env=env)
    assert feed.exit_code == 0, feed.output
    assert "live feed stopped" in feed.output and "0 quarantined" in feed.output
    assert signal.getsignal(signal.SIGINT) is before
