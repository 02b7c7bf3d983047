"""Scale-out on the real services: two API servers (`carecast serve --workers 1` on two ports) and two scoring
workers (`carecast worker`), all separate processes sharing one PostgreSQL schema and one Redis database (the
scoring queue and the live-update bus).

Shown here: every reading posted to either server is scored exactly once (one prediction per reading, one
queue job per reading, every job completed by exactly one worker); a live-update client connected to either
server sees the updates caused through the other; and a backlog is worked off by one worker, then by two,
both of which do part of it. The jobs/s of each are printed; speed is never asserted (benchmarks/ measure it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from sqlalchemy import func, select, text

from carecast.config import Settings
from carecast.jobs.ingest import ingest_paths
from carecast.scoring.queue import RedisQueue
from carecast.security.tokens import issue_token
from carecast.security.users import create_user
from carecast.simulate import SimulationConfig, simulate
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.db import make_engine
from tests import factories as F
from tests.conftest import PG_URL
from tests.unit.scoring import REDIS_URL, TASK, TrainedModels, registry_copy

pytestmark = pytest.mark.postgres

CARECAST = Path(sys.executable).parent / "carecast"
START_LIMIT_S = 120.0  # a process not ready by then has failed (loaded machines start slowly)
ARRIVAL_LIMIT_S = 60.0  # arrival, not speed: the wait for a score or an event before the test fails
HOSPITAL = SimulationConfig(seed=13, patients=100, days=2, wearable_share=0.0)
FED = 4  # in-house patients receiving readings
ROUNDS = 3  # readings per fed patient
PASSWORD = "correct horse battery staple"
QUEUE_PREFIX = "carecast:score:"  # RedisQueue's default: the prefix `carecast serve` and `carecast worker` use


# -- processes -------------------------------------------------------------------------------------------------

@dataclass
class Process:
    """A `carecast` command in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> Process:
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen([str(CARECAST), *args], env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return cls(name, popen, log)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> None:
        """Ask for a graceful stop (SIGTERM to the process group) without waiting."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self) -> str:
        """SIGTERM (a graceful stop), SIGKILL after 20 s; the output."""
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        with contextlib.suppress(ProcessLookupError):  # gunicorn's worker, if it outlived its master
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.output()


@dataclass
class Worker:
    """A `carecast worker` whose Redis connections carry a name: once that name shows in CLIENT LIST, the
    worker has its model loaded and is claiming jobs (it first connects to ask for jobs)."""

    process: Process
    client_name: str
    stats: dict[str, int] = field(default_factory=dict)

    def stop(self) -> dict[str, int]:
        out = self.process.stop()
        found = re.search(r"worker stopped: WorkerStats\((.*?)\)", out)
        assert found, f"{self.process.name} printed no stats:\n{out[-2000:]}"
        self.stats = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}
        return self.stats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Any, what: str, limit: float = ARRIVAL_LIMIT_S, every: float = 0.1,
               alive: tuple[Process, ...] = ()) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        for proc in alive:
            proc.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {limit:.0f} s")
        time.sleep(every)


# -- the cluster -------------------------------------------------------------------------------------------

@dataclass
class Cluster:
    env: dict[str, str]
    logs: Path
    store: Store
    redis_url: str
    queue: RedisQueue
    ports: tuple[int, int]
    servers: tuple[Process, Process]
    workers: list[Worker]
    nurse: str  # token: may ingest, units of the fed patients
    clinician: str  # token: sees the fed patients' units
    fed: list[tuple[str, int, str, datetime]]  # (FHIR id, patient id, uid, latest observation time)
    patient_ids: list[int]

    def start_worker(self, label: str) -> Worker:
        name = f"cc-scale-{uuid.uuid4().hex[:8]}-{label}"
        named = f"{self.redis_url}?client_name={name}"
        env = {**self.env, "CARECAST_QUEUE_URL": named, "CARECAST_EVENTS_URL": named}
        worker = Worker(Process.start(f"worker-{label}", ["worker"], env, self.logs), name)
        self.workers.append(worker)
        return worker

    def wait_claiming(self, *workers: Worker) -> None:
        def connected() -> bool:
            names = {c.get("name") for c in self.queue.client.client_list()}
            return all(w.client_name in names for w in workers)

        wait_until(connected, "scoring workers claiming", START_LIMIT_S, 0.25, tuple(w.process for w in workers))

    def jobs_created(self) -> int:
        return int(self.queue.client.get(QUEUE_PREFIX + "seq") or 0)

    def drain(self, what: str) -> None:
        wait_until(lambda: self.queue.depth() == 0, what, every=0.05)

    def post_reading(self, server: int, fhir_id: str, when: datetime, oid: str, value: float) -> None:
        vital = F.vital(oid, "8867-4", value, "/min", pid=fhir_id, eid=None,
                        when=when.isoformat().replace("+00:00", "Z"))
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[server], timeout=30)
        try:
            conn.request("POST", "/api/v1/ingest/fhir", body=orjson.dumps(F.bundle([vital])),
                         headers={"Authorization": f"Bearer {self.nurse}", "Content-Type": "application/fhir+json"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200, body[:300]
        assert json.loads(body)["inserted"] == 1


def _redis_db_url() -> str:
    """The test Redis at a database number holding no keys: the servers' and workers' queue and rate-limit
    keys are this test's alone (pub/sub channels are server-wide; a foreign event only makes a stream re-read
    its table)."""
    import redis

    parts = urlsplit(REDIS_URL)
    base = f"{parts.scheme}://{parts.netloc}"
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{db}")
        try:
            if client.dbsize() == 0:
                return f"{base}/{db}"
        except Exception as exc:  # pragma: no cover - environment problem, reported clearly
            pytest.fail(f"Redis at {base} is not reachable ({type(exc).__name__}); start it or set "
                        "CARECAST_TEST_REDIS_URL")
        finally:
            client.close()
    pytest.fail(f"no empty Redis database at {base}")


@contextlib.contextmanager
def _schema() -> Iterator[str]:
    name = f"cc_scale_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


def _fed_patients(store: Store, hospital: Path) -> list[tuple[str, int, str, datetime, str]]:
    """In-house patients of the simulated files with their latest observation: (FHIR id, id, uid, time, unit)."""
    found: list[tuple[str, int, str, datetime, str]] = []
    for line in (hospital / "Encounter.ndjson").read_bytes().splitlines():
        enc = orjson.loads(line)
        if enc["status"] != "in-progress" or enc["class"]["code"] != "IMP":
            continue
        fhir_id = enc["subject"]["reference"].removeprefix("Patient/")
        key = store.keyring.record_key(f"Patient/{fhir_id}")
        with store.engine.connect() as conn:
            pid, uid = conn.execute(select(S.Patient.id, S.Patient.uid).where(S.Patient.source_key == key)).one()
            stay = conn.execute(
                select(S.Encounter.unit, func.max(S.Observation.effective_at))
                .join(S.Observation, S.Observation.patient_id == S.Encounter.patient_id)
                .where(S.Encounter.patient_id == pid, S.Encounter.discharged_at.is_(None))
                .group_by(S.Encounter.unit)).first()
        if stay is not None and stay[0] is not None and stay[1] is not None and fhir_id not in {f[0] for f in found}:
            found.append((fhir_id, int(pid), str(uid), stay[1], str(stay[0])))
        if len(found) == FED:
            return found
    raise AssertionError(f"the simulated hospital has fewer than {FED} in-house patients")


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@pytest.fixture(scope="module")
def cluster(models: TrainedModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("scale-out")
    hospital = root / "hospital"
    simulate(HOSPITAL, hospital)
    registry_copy(models, root / "models")
    redis_url = _redis_db_url()
    with _schema() as db_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CARECAST_", "PROMETHEUS_"))}
        env.update({"CARECAST_ENV": "test", "CARECAST_DATA_DIR": str(root / "var"), "CARECAST_DATABASE_URL": db_url,
                    "CARECAST_MODEL_REGISTRY": str(root / "models"), "CARECAST_QUEUE_URL": redis_url,
                    "CARECAST_EVENTS_URL": redis_url, "CARECAST_RATE_LIMIT": "1000000",
                    "CARECAST_RETRAIN_INTERVAL_HOURS": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
        store = Store.open(Settings.from_env(env))  # migrates the schema, writes the key file all processes use
        queue = RedisQueue(redis_url)
        logs = root / "logs"
        logs.mkdir()
        started: list[Process] = []
        cl: Cluster | None = None
        try:
            summary = ingest_paths([hospital], store.writer())
            assert summary.total("rejected") == 0
            picked = _fed_patients(store, hospital)
            units = sorted({p[4] for p in picked})
            nurse = issue_token(store.engine, create_user(store.engine, "scale-nurse", PASSWORD, "nurse", units),
                                "scale-out test", [], ttl_hours=1)
            clinician = issue_token(store.engine, create_user(store.engine, "scale-clinician", PASSWORD, "clinician",
                                                              units), "scale-out test", [], ttl_hours=1)
            with store.engine.connect() as conn:
                patient_ids = [int(p) for p in conn.execute(select(S.Patient.id)).scalars()]
            ports = (free_port(), free_port())
            servers = tuple(Process.start(f"server-{i}", ["serve", "--host", "127.0.0.1", "--port", str(port),
                                                          "--workers", "1"], env, logs)
                            for i, port in enumerate(ports))
            started.extend(servers)
            cl = Cluster(env=env, logs=logs, store=store, redis_url=redis_url, queue=queue, ports=ports,
                         servers=(servers[0], servers[1]), workers=[], nurse=nurse, clinician=clinician,
                         fed=[(p[0], p[1], p[2], p[3]) for p in picked], patient_ids=patient_ids)
            first = cl.start_worker("1")
            second = cl.start_worker("2")
            wait_until(lambda: all(_ready(p) for p in ports), "both API servers ready", START_LIMIT_S, 0.25, servers)
            cl.wait_claiming(first, second)
            # Every patient's first score, before anything is measured.
            queue.enqueue(patient_ids, None)
            cl.drain("first scores of every patient")
            yield cl
        finally:
            running = [w.process for w in (cl.workers if cl is not None else [])] + started
            for proc in running:  # all at once: each takes a few seconds to stop gracefully
                proc.terminate()
            for proc in running:
                proc.stop()
            queue.clear()
            with contextlib.suppress(Exception):
                leftover = list(queue.client.scan_iter(match="carecast:*", count=500))
                if leftover:
                    queue.client.delete(*leftover)
            queue.close()
            store.close()


# -- live streams -----------------------------------------------------------------------------------------

class Stream:
    """An open `GET /api/v1/stream`, read in a thread: the (patient uid, data time) of each risk event."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ARRIVAL_LIMIT_S)
        self.conn.request("GET", "/api/v1/stream", headers={"Authorization": f"Bearer {token}"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.readline().startswith(b"retry:") and self.response.readline() == b": connected\n"
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError, AttributeError):
            while line := self.response.readline():
                line_text = line.decode().rstrip("\n")
                if line_text:
                    name, _, value = line_text.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                if fields.get("event") == "risk-updated":
                    data = json.loads(fields["data"])
                    if data["task"] == TASK:
                        with self.lock:
                            self.seen.append((data["patient_uid"], data["data_time"]))
                fields = {}

    def has(self, uid: str, when: datetime) -> bool:
        with self.lock:
            return (uid, when.isoformat()) in self.seen

    def close(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.response.close()
        self.conn.close()


# -- the tests --------------------------------------------------------------------------------------------

def _predictions(store: Store) -> list[tuple[int, datetime]]:
    P = S.table(S.Prediction)
    with store.engine.connect() as conn:
        return [(int(r.patient_id), r.data_time) for r in conn.execute(
            select(P.c.patient_id, P.c.data_time).where(P.c.task == TASK, P.c.shadow.is_(False)))]


def test_each_reading_is_scored_once_and_reaches_streams_on_both_servers(cluster: Cluster) -> None:
    """Readings posted alternately to server A and server B: each is one queue job and one stored prediction,
    and each update reaches a live client on A and one on B, whichever server took the reading."""
    before = _predictions(cluster.store)
    jobs_before = cluster.jobs_created()
    streams = (Stream(cluster.ports[0], cluster.clinician), Stream(cluster.ports[1], cluster.clinician))
    posted: list[tuple[int, str, datetime, int]] = []  # (patient id, uid, data time, server)
    try:
        for r in range(ROUNDS):
            this_round = []
            for i, (fhir_id, pid, uid, latest) in enumerate(cluster.fed):
                server = (i + r) % 2
                when = latest + timedelta(minutes=5 * (r + 1))
                cluster.post_reading(server, fhir_id, when, f"scale-{uuid.uuid4().hex[:12]}", 80.0 + 10 * r + i)
                this_round.append((pid, uid, when, server))
            # One round at a time: a reading's job is finished before the same patient's next reading comes,
            # so no two readings share (coalesce into) one job and each must have its own prediction.
            wait_until(lambda rnd=this_round: all(s.has(uid, when) for _, uid, when, _ in rnd for s in streams),
                       f"round {r + 1}: every update on both streams", alive=(*cluster.servers,))
            posted.extend(this_round)
    finally:
        for s in streams:
            s.close()
    cluster.drain("queue empty after the readings")

    new = sorted(set(_predictions(cluster.store)) - set(before))
    assert new == sorted((pid, when) for pid, _, when, _ in posted)  # one per reading: none missing, none extra
    assert len(_predictions(cluster.store)) - len(before) == len(posted)  # ... and no duplicate rows
    assert cluster.jobs_created() - jobs_before == len(posted)  # one queue job per reading
    assert {server for *_, server in posted} == {0, 1}
    assert cluster.queue.failed() == []


def test_backlog_is_shared_by_workers_and_every_job_done_once(cluster: Cluster) -> None:
    """The same backlog (every patient re-scored) worked off by one worker, then by two: both of the two do
    part of it. Jobs/s are printed (a figure, not an assertion). Over the whole module, the jobs the workers
    report completed add up to the jobs the queue created: none lost, none done twice."""
    first, second = cluster.workers[0], cluster.workers[1]
    second.stop()
    backlog = len(cluster.patient_ids)

    jobs_at = cluster.jobs_created()
    began = time.perf_counter()
    cluster.queue.enqueue(cluster.patient_ids, None)
    cluster.drain("backlog with one worker")
    one_worker_s = time.perf_counter() - began
    assert cluster.jobs_created() - jobs_at == backlog

    third = cluster.start_worker("3")
    cluster.wait_claiming(third)
    jobs_at = cluster.jobs_created()
    began = time.perf_counter()
    cluster.queue.enqueue(cluster.patient_ids, None)
    cluster.drain("backlog with two workers")
    two_workers_s = time.perf_counter() - began
    assert cluster.jobs_created() - jobs_at == backlog

    third_done = third.stop()["completed"]  # the third worker lived through this backlog only
    print(f"\nbacklog of {backlog} patients: 1 worker {backlog / one_worker_s:.1f} jobs/s, 2 workers "
          f"{backlog / two_workers_s:.1f} jobs/s ({one_worker_s / two_workers_s:.2f}x); in the second, "
          f"the new worker did {third_done} jobs and the other {backlog - third_done}")
    assert 0 < third_done < backlog  # both workers did part of the second backlog

    first.stop()
    completed = sum(w.stats["completed"] for w in cluster.workers)
    assert completed == cluster.jobs_created()
    assert sum(w.stats["failed"] for w in cluster.workers) == 0
