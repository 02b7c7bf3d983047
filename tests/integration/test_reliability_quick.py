"""Bounded versions of issue 8's reliability proofs (the full ones are tests/verify/test_reliability.py, run by
`make verify`): a graceful stop of one small server with requests sent before the signal, the listen queue
taken in at a stop, and a scoring worker killed (-9) with a small backlog. SQLite; seconds each.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from carecast.config import Settings
from carecast.jobs.worker import run_worker
from carecast.models.registry import Registry
from carecast.scoring.predictor import Predictor
from carecast.scoring.queue import DatabaseQueue
from carecast.serving.wsgi import _accept_backlog
from carecast.simulate import SimulationConfig, simulate
from carecast.store import Store
from carecast.store import schema as S
from tests.unit.scoring import TASK, ingest, registry_copy, trained_models
from tests.verify import servers as sv

# more patients than one claim of the scoring worker (50): a kill after the first claim's commit leaves jobs
HOSPITAL = SimulationConfig(seed=13, patients=120, days=1, wearable_share=0.0)
IN_FLIGHT = 6  # requests sent before the SIGTERM
READINGS_PER_REQUEST = 30
FED = 2


@dataclass(frozen=True)
class Site:
    env: dict[str, str]
    settings: Settings
    plan: object  # benchmarks/realtime.py Plan: fed patients, nurse token


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("reliability-quick")
    models = trained_models(tmp_path_factory)
    registry_copy(models, root / "models")
    simulate(HOSPITAL, root / "data" / "sim")
    env = sv.server_env(root / "data", CARECAST_MODEL_REGISTRY=str(root / "models"))
    settings = Settings.from_env(env)
    store = Store.open(settings)
    try:
        ingest(store, root / "data" / "sim")
    finally:
        store.close()
    yield Site(env, settings, sv.realtime.make_plan(settings, root / "data" / "sim", FED))


def test_sigterm_answers_every_request_sent_before_it(site: Site, tmp_path: Path) -> None:
    port = sv.bench.free_port()
    readings = sv.Readings(site.plan)
    server = sv.serve(site.env, tmp_path / "serve.log", port, workers=1)
    conns: list[http.client.HTTPConnection] = []
    try:
        sv.wait_ready(port, server)
        sent: list[int] = []
        for _ in range(IN_FLIGHT):  # each request written to its socket before the signal
            first, body = readings.take(READINGS_PER_REQUEST)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/api/v1/ingest/fhir", body=body, headers=readings.headers)
            conns.append(conn)
            sent.append(first)
        server.signal(signal.SIGTERM)
        answers = []
        for conn in conns:
            response = conn.getresponse()
            answers.append((response.status, json.loads(response.read())))
        assert server.popen is not None
        code = server.popen.wait(60)
    finally:
        for conn in conns:
            conn.close()
        server.stop()
    assert [status for status, _ in answers] == [200] * IN_FLIGHT
    assert all(body["inserted"] == READINGS_PER_REQUEST for _, body in answers)
    assert code == 0
    store = Store.open(site.settings)
    try:
        keys = [store.keyring.record_key(f"Observation/{oid}") for f in sent
                for oid in readings.ids(f, READINGS_PER_REQUEST)]
        with store.engine.connect() as conn_:
            stored = conn_.execute(select(S.Observation.id).where(S.Observation.source_key.in_(keys))).all()
    finally:
        store.close()
    assert len(stored) == IN_FLIGHT * READINGS_PER_REQUEST


class _Worker:
    """What `_accept_backlog` uses of a gunicorn gthread worker: its listeners and `accept`."""

    def __init__(self, listener: socket.socket) -> None:
        self.sockets = [listener]
        self.accepted: list[socket.socket] = []

    def accept(self, listener: socket.socket) -> None:
        with_client, _ = listener.accept()
        self.accepted.append(with_client)


def test_a_stop_accepts_the_connections_waiting_in_the_listen_queue() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    listener.setblocking(False)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]  # queued by the kernel
    worker = _Worker(listener)
    try:
        _accept_backlog(worker)
        assert len(worker.accepted) == 5
        _accept_backlog(worker)  # an empty queue: nothing more, and no blocking
        assert len(worker.accepted) == 5
    finally:
        for s in [*clients, *worker.accepted, listener]:
            s.close()


def test_a_scoring_worker_killed_mid_backlog_leaves_each_patient_scored_once(site: Site, tmp_path: Path) -> None:
    store = Store.open(site.settings)
    try:
        queue = DatabaseQueue(store.engine)
        with store.engine.connect() as conn:
            patients = [int(p) for p in conn.execute(select(S.Patient.id)).scalars()]
        P = S.table(S.Prediction)

        def scores() -> Counter[tuple[int, object]]:
            with store.engine.connect() as conn:
                return Counter((int(r.patient_id), r.data_time) for r in conn.execute(
                    select(P.c.patient_id, P.c.data_time).where(P.c.task == TASK, P.c.shadow.is_(False))))

        expected = sv.expected_scores(store)
        before = scores()
        queue.enqueue(patients, None)
        killed = sv.worker(site.env, tmp_path / "worker.log")
        try:
            sv.wait_until(lambda: len(scores()) > len(before), "a first score", alive=(killed,), every=0.01)
        finally:
            killed.kill9()
        left = queue.depth()
        # The restart, in this process: its clock is past the killed worker's leases (30 s), which it reclaims.
        later = DatabaseQueue(store.engine, clock=lambda: queue.clock() + timedelta(minutes=1))
        predictor = Predictor(Registry(site.settings.model_registry), [TASK])
        stats = run_worker(store, predictor, later, None, stop=threading.Event(), exit_when_idle=True)
        after = scores()
        assert queue.depth() == 0
        assert queue.failed() == []
    finally:
        store.close()
    assert left > 0  # killed with jobs not done
    assert stats.failed == 0
    assert set(after) == set(expected.items())  # none missing, none unexpected
    assert all(n == 1 for n in after.values())  # none duplicated
