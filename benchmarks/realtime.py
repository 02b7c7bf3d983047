"""New reading to updated risk, end to end: `carecast serve` (gunicorn, 2 workers) under a steady feed of vital
signs, with a Server-Sent Events client timing each reading until the risk computed from it is pushed.

One run:

1. builds a temporary data dir with `benchmarks/serving.py`'s `build_fixture` (a simulated hospital ingested
   into SQLite, deterioration_24h trained and promoted champion);
2. picks --fed in-house patients (open inpatient stays of the simulated files) and creates a nurse (who may
   ingest) and a clinician (who listens) of their units, each with a bearer token;
3. for each configuration asked for (--config):
   - `embedded`: SQLite, the database scoring queue and an embedded scoring worker thread in each gunicorn
     worker process, live updates read from the `predictions` table (the default of `carecast serve`);
   - `scaled`: PostgreSQL (127.0.0.1:5432 database `test`, a fresh schema, the same simulated files ingested,
     the same key and model registry) with the Redis queue and Redis pub/sub bus (127.0.0.1:6379, a database
     number with no keys) and --scoring-workers `carecast worker` processes beside the API;
   starts the server (and workers), opens `GET /api/v1/stream` as the clinician, and posts FHIR `batch`
   Bundles of --batch heart-rate / respiratory-rate / SpO2 readings at a steady --rate readings/s for
   --duration seconds (--feeders threads, each with its own keep-alive connection, sending at scheduled
   times; a late POST is sent at once, never skipped). Each reading is one patient's next observation,
   data times one simulated second apart;
4. for each reading, the latency is the time from its POST being sent to the arrival of the first
   `risk-updated` event of the same patient whose data time is at or after the reading's. The worker scores a
   patient at the time of their latest reading, so several readings of one patient that arrive within one
   scoring pass are answered by one prediction (coalesced): each of them is timed to that event. Prints p50,
   p99 and max, the share of readings whose update arrived (within --drain seconds after the feed), the
   achieved feed rate, the predictions per reading, and whether the target is met (p99 <= 1 s at 200
   readings/s, with every update arriving).

The feeder, the listener, the servers and the scoring workers share this machine's cores (the CPU count and
load are printed).

    python benchmarks/realtime.py [--config both] [--duration 30] [--rate 200] [--fed 20] [--batch 10]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from serving import CARECAST, RATE_LIMIT_PER_MINUTE, build_fixture, free_port, running, stop

PG_URL = os.environ.get("CARECAST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CARECAST_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
TASK = "deterioration_24h"
SERVER_WORKERS = 2
TARGET_P99_S = 1.0
TARGET_RATE = 200.0
WORKER_READY_TIMEOUT_S = 120.0
# (LOINC, UCUM unit, plausible low, high): the readings a bedside monitor sends.
VITALS = (("8867-4", "/min", 55.0, 135.0), ("9279-1", "/min", 11.0, 28.0), ("59408-5", "%", 88.0, 100.0))


@dataclass(frozen=True)
class FedPatient:
    fhir_id: str
    uid: str
    unit: str
    latest: datetime  # the latest observation stored for them


@dataclass(frozen=True)
class Plan:
    patients: list[FedPatient]
    nurse_token: str  # posts the readings
    clinician_token: str  # listens to the stream


@dataclass
class Reading:
    uid: str
    data_time: datetime
    sent: float = math.nan  # perf_counter when its POST was sent
    arrived: float = math.nan  # perf_counter when its update arrived


@dataclass
class Feed:
    readings: list[Reading]
    post_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# -- the plan: who is fed, who posts, who listens ------------------------------------------------------------

def in_house_fhir_ids(sim_dir: Path) -> list[str]:
    """FHIR ids of patients with an open inpatient stay in the simulated files, in file order."""
    ids = []
    for line in (sim_dir / "Encounter.ndjson").read_text().splitlines():
        enc = json.loads(line)
        if enc.get("status") == "in-progress" and enc.get("class", {}).get("code") == "IMP":
            ids.append(enc["subject"]["reference"].removeprefix("Patient/"))
    return list(dict.fromkeys(ids))


def make_plan(settings: Any, sim_dir: Path, fed: int) -> Plan:
    """Pick `fed` in-house patients of the store at `settings` and create the nurse and the clinician."""
    from sqlalchemy import func, select

    from carecast.security.tokens import issue_token
    from carecast.security.users import create_user
    from carecast.store import Store
    from carecast.store import schema as S

    store = Store.open(settings)
    try:
        chosen: list[FedPatient] = []
        for fhir_id in in_house_fhir_ids(sim_dir):
            key = store.keyring.record_key(f"Patient/{fhir_id}")
            with store.engine.connect() as conn:
                found = conn.execute(select(S.Patient.id, S.Patient.uid).where(S.Patient.source_key == key)).first()
                if found is None:
                    continue
                stay = conn.execute(
                    select(S.Encounter.unit, func.max(S.Observation.effective_at))
                    .join(S.Observation, S.Observation.patient_id == S.Encounter.patient_id)
                    .where(S.Encounter.patient_id == found.id, S.Encounter.discharged_at.is_(None))
                    .group_by(S.Encounter.unit)).first()
            if stay is None or stay[0] is None or stay[1] is None:
                continue
            chosen.append(FedPatient(fhir_id=fhir_id, uid=str(found.uid), unit=str(stay[0]), latest=stay[1]))
            if len(chosen) == fed:
                break
        if len(chosen) < fed:
            raise SystemExit(f"only {len(chosen)} in-house patients with observations; lower --fed or raise --patients")
        units = sorted({p.unit for p in chosen})
        nurse = create_user(store.engine, "rt-nurse", "rt-bench-password-not-secret", "nurse", units)
        clinician = create_user(store.engine, "rt-clinician", "rt-bench-password-not-secret", "clinician", units)
        return Plan(chosen, issue_token(store.engine, nurse, "realtime bench", [], ttl_hours=2),
                    issue_token(store.engine, clinician, "realtime bench", [], ttl_hours=2))
    finally:
        store.close()


def readings_for(plan: Plan, count: int) -> list[Reading]:
    """`count` readings, round-robin over the fed patients, data times one simulated second apart and after
    everything already stored."""
    base = max(p.latest for p in plan.patients) + timedelta(minutes=1)
    fed = plan.patients
    return [Reading(uid=fed[i % len(fed)].uid, data_time=base + timedelta(seconds=i)) for i in range(count)]


def bundle(plan: Plan, readings: list[Reading], first: int, run: str, rng: random.Random) -> bytes:
    by_uid = {p.uid: p for p in plan.patients}
    entries = []
    for k, reading in enumerate(readings):
        loinc, unit, low, high = VITALS[(first + k) % len(VITALS)]
        oid = f"rt-{run}-{first + k}"
        entries.append({
            "fullUrl": f"http://bench.example/fhir/Observation/{oid}",
            "request": {"method": "PUT", "url": f"Observation/{oid}"},
            "resource": {
                "resourceType": "Observation", "id": oid, "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                          "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                "subject": {"reference": f"Patient/{by_uid[reading.uid].fhir_id}"},
                "effectiveDateTime": reading.data_time.isoformat().replace("+00:00", "Z"),
                "valueQuantity": {"value": round(rng.uniform(low, high), 1), "unit": unit,
                                  "system": "http://unitsofmeasure.org", "code": unit}}})
    return json.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries}).encode()


# -- the listener -------------------------------------------------------------------------------------------

class Listener:
    """Reads `risk-updated` events of one SSE stream in a thread: (patient uid, data time, arrival) each."""

    def __init__(self, port: int, token: str, task: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.request("GET", "/api/v1/stream", headers={"Authorization": f"Bearer {token}"})
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"stream: {self.response.status} {self.response.read()[:200]!r}")
        self.task = task
        self.events: list[tuple[str, datetime, float]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError, AttributeError):
            while True:
                line = self.response.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                if text:
                    name, _, value = text.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                if fields.get("event") == "risk-updated":
                    arrived = time.perf_counter()
                    data = json.loads(fields["data"])
                    if data["task"] == self.task:
                        with self.lock:
                            self.events.append((data["patient_uid"], datetime.fromisoformat(data["data_time"]),
                                                arrived))
                fields = {}

    def snapshot(self) -> list[tuple[str, datetime, float]]:
        with self.lock:
            return list(self.events)

    def close(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread, which then ends
        self.thread.join(5)
        self.response.close()
        self.conn.close()


def match(readings: list[Reading], events: list[tuple[str, datetime, float]]) -> int:
    """Set each reading's arrival: the first event of its patient with a data time at or after the reading's,
    received after the reading was sent. Returns how many distinct events answered readings."""
    by_uid: dict[str, list[tuple[float, datetime]]] = {}
    for uid, when, arrived in events:
        by_uid.setdefault(uid, []).append((arrived, when))
    used: set[tuple[str, float]] = set()
    for reading in readings:
        for arrived, when in sorted(by_uid.get(reading.uid, [])):
            if arrived >= reading.sent and when >= reading.data_time:
                reading.arrived = arrived
                used.add((reading.uid, arrived))
                break
    return len(used)


# -- the feeder ---------------------------------------------------------------------------------------------

def feed(port: int, plan: Plan, readings: list[Reading], rate: float, batch: int, feeders: int, seed: int) -> Feed:
    """POST the readings in bundles of `batch` at `rate` readings/s from `feeders` threads."""
    result = Feed(readings)
    lock = threading.Lock()
    run = uuid.uuid4().hex[:8]
    posts = [(i, readings[i : i + batch]) for i in range(0, len(readings), batch)]
    headers = {"Authorization": f"Bearer {plan.nurse_token}", "Content-Type": "application/fhir+json"}
    start = time.perf_counter() + 0.2

    def feeder(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for number in range(k, len(posts), feeders):
            first, chunk = posts[number]
            body = bundle(plan, chunk, first, run, rng)
            due = start + first / rate
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            for reading in chunk:
                reading.sent = sent
            try:
                conn.request("POST", "/api/v1/ingest/fhir", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                problem = None if response.status == 200 else f"{response.status} {payload[:160]!r}"
                if problem is None and json.loads(payload).get("rejected"):
                    problem = "readings quarantined"  # a batch Bundle stores the rest; the report says why
            except (OSError, http.client.HTTPException) as exc:
                problem = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                result.post_seconds.append(time.perf_counter() - sent)
                if problem:
                    result.errors.append(problem)
                    for reading in chunk:
                        reading.sent = math.nan  # not stored: not timed
        conn.close()

    threads = [threading.Thread(target=feeder, args=(k,), daemon=True) for k in range(feeders)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return result


# -- one configuration --------------------------------------------------------------------------------------

@dataclass
class Outcome:
    name: str
    readings: int
    timed: int
    arrived: int
    latencies_s: np.ndarray
    feed_rate: float
    predictions: int
    post_p50_ms: float
    post_p99_ms: float
    errors: int
    first_error: str | None

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if len(self.latencies_s) else math.nan


def measure(name: str, port: int, plan: Plan, args: argparse.Namespace) -> Outcome:
    readings = readings_for(plan, round(args.rate * args.duration))
    listener = Listener(port, plan.clinician_token, TASK)
    try:
        time.sleep(0.5)  # the stream's subscription is in place before the first reading
        result = feed(port, plan, readings, args.rate, args.batch, args.feeders, args.seed)
        sent = [r.sent for r in readings if not math.isnan(r.sent)]
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline:
            match(readings, listener.snapshot())
            if all(not math.isnan(r.arrived) for r in readings if not math.isnan(r.sent)):
                break
            time.sleep(0.25)
        used = match(readings, listener.snapshot())
    finally:
        listener.close()
    timed = [r for r in readings if not math.isnan(r.sent)]
    done = [r for r in timed if not math.isnan(r.arrived)]
    span = max(sent) - min(sent) if len(sent) > 1 else math.nan
    # The last bundle's readings were sent at max(sent): the feed lasted the span plus one bundle interval.
    feed_rate = len(timed) / (span + args.batch / args.rate) if sent else 0.0
    posts = np.array(result.post_seconds) * 1000.0
    return Outcome(name=name, readings=len(readings), timed=len(timed), arrived=len(done),
                   latencies_s=np.array([r.arrived - r.sent for r in done]), feed_rate=feed_rate, predictions=used,
                   post_p50_ms=float(np.percentile(posts, 50)) if len(posts) else math.nan,
                   post_p99_ms=float(np.percentile(posts, 99)) if len(posts) else math.nan,
                   errors=len(result.errors), first_error=result.errors[0] if result.errors else None)


def base_env(data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "CARECAST_DATA_DIR": str(data_dir), "CARECAST_ENV": "test", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "CARECAST_RATE_LIMIT": str(RATE_LIMIT_PER_MINUTE),
           "CARECAST_RETRAIN_INTERVAL_HOURS": "0"}
    for name in ("CARECAST_DATABASE_URL", "CARECAST_KEY_FILE", "CARECAST_MODEL_REGISTRY", "CARECAST_QUEUE_URL",
                 "CARECAST_EVENTS_URL", "CARECAST_DATA_KEY"):
        env.pop(name, None)
    return env


def serve_cmd(port: int) -> list[str]:
    return [str(CARECAST), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(SERVER_WORKERS)]


def run_embedded(data_dir: Path, work: Path, args: argparse.Namespace) -> Outcome:
    from carecast.config import Settings

    env = base_env(data_dir)
    plan = make_plan(Settings.from_env(env), data_dir / "sim", args.fed)
    port = free_port()
    with running(serve_cmd(port), env, work / "embedded.log", "/readyz", port):
        return measure("embedded: SQLite + database queue + embedded workers", port, plan, args)


def empty_redis_db(base_url: str) -> int:
    """A Redis database number holding no keys (so this run's queue and rate-limit keys are its own). Looked
    for from 1 up; tests/integration/test_scale_out.py looks from 15 down."""
    import redis

    for db in range(1, 16):
        client = redis.Redis.from_url(f"{base_url}/{db}")
        try:
            if client.dbsize() == 0:
                return db
        finally:
            client.close()
    raise SystemExit(f"no empty Redis database at {base_url}")


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    from sqlalchemy import text

    from carecast.store.db import make_engine

    schema = f"cc_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextlib.contextmanager
def scoring_workers(count: int, env: Mapping[str, str], redis_url: str, work: Path) -> Iterator[None]:
    """`count` `carecast worker` processes, each naming its Redis connection; returns once each is claiming
    (a worker first connects to Redis when it asks for jobs with its model loaded)."""
    import redis

    names = [f"cc-bench-{uuid.uuid4().hex[:6]}-w{i}" for i in range(count)]
    procs = []
    try:
        for i, name in enumerate(names):
            named = f"{redis_url}?client_name={name}"
            worker_env = {**env, "CARECAST_QUEUE_URL": named, "CARECAST_EVENTS_URL": named}
            with (work / f"worker-{i}.log").open("wb") as out:
                procs.append(subprocess.Popen([str(CARECAST), "worker"], env=worker_env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while not set(names) <= {c.get("name") for c in client.client_list()}:
            for i, proc in enumerate(procs):
                if proc.poll() is not None:
                    raise RuntimeError(f"carecast worker {i} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("scoring workers not claiming jobs in time")
            time.sleep(0.25)
        client.close()
        yield
    finally:
        for proc in procs:
            stop(proc)


def run_scaled(data_dir: Path, work: Path, args: argparse.Namespace) -> Outcome:
    import redis

    from carecast.config import Settings
    from carecast.jobs.ingest import ingest_paths
    from carecast.store import Store

    with postgres_schema() as db_url:
        redis_url = f"{REDIS_URL}/{empty_redis_db(REDIS_URL)}"
        env = {**base_env(data_dir), "CARECAST_DATABASE_URL": db_url, "CARECAST_QUEUE_URL": redis_url,
               "CARECAST_EVENTS_URL": redis_url}
        settings = Settings.from_env(env)
        t = time.perf_counter()
        store = Store.open(settings)  # migrates the new schema; the data dir's key file
        try:
            ingest_paths([data_dir / "sim"], store.writer())
        finally:
            store.close()
        print(f"scaled: the simulated files ingested into PostgreSQL in {time.perf_counter() - t:.0f} s; "
              f"Redis {redis_url}")
        plan = make_plan(settings, data_dir / "sim", args.fed)
        port = free_port()
        try:
            with running(serve_cmd(port), env, work / "scaled.log", "/readyz", port), \
                    scoring_workers(args.scoring_workers, env, redis_url, work):
                return measure(f"scaled: PostgreSQL + Redis + {args.scoring_workers} carecast worker", port, plan,
                               args)
        finally:
            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match="carecast:*", count=500))
            if keys:
                client.delete(*keys)
            client.close()


# -- report -------------------------------------------------------------------------------------------------

def report(outcome: Outcome, args: argparse.Namespace) -> None:
    share = outcome.arrived / outcome.timed if outcome.timed else 0.0
    errors = f"; {outcome.errors} POSTs failed (first: {outcome.first_error})" if outcome.errors else ""
    print(f"\n{outcome.name}")
    print(f"  readings posted:   {outcome.timed:,} of {outcome.readings:,} at {outcome.feed_rate:,.1f} readings/s "
          f"(asked {args.rate:g}); POST p50 {outcome.post_p50_ms:.0f} ms, p99 {outcome.post_p99_ms:.0f} ms{errors}")
    print(f"  updates arrived:   {outcome.arrived:,} of {outcome.timed:,} ({share:.1%}), answered by "
          f"{outcome.predictions:,} predictions ({outcome.predictions / max(outcome.arrived, 1):.2f} per reading)")
    print(f"  reading -> risk:   p50 {outcome.pct(50) * 1000:,.0f} ms   p99 {outcome.pct(99) * 1000:,.0f} ms   "
          f"max {(outcome.latencies_s.max() if len(outcome.latencies_s) else math.nan) * 1000:,.0f} ms")
    met = (outcome.pct(99) <= TARGET_P99_S and share == 1.0 and outcome.feed_rate >= 0.95 * TARGET_RATE
           and args.rate >= TARGET_RATE)
    print(f"  target p99 <= {TARGET_P99_S:g} s at {TARGET_RATE:g} readings/s, every update arriving: "
          f"{'met' if met else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("embedded", "scaled", "both"), default="both")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of feed")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="readings per second")
    parser.add_argument("--fed", type=int, default=20, help="in-house patients receiving the readings")
    parser.add_argument("--batch", type=int, default=10, help="readings per POST")
    parser.add_argument("--feeders", type=int, default=4, help="threads posting (one connection each)")
    parser.add_argument("--scoring-workers", type=int, default=2, help="`carecast worker` processes (scaled)")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds to wait for updates after the feed")
    parser.add_argument("--patients", type=int, default=300, help="simulated hospital size")
    parser.add_argument("--days", type=float, default=8.0, help="simulated days of history")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.batch < 1 or args.rate <= 0 or args.fed < 1 or args.feeders < 1:
        parser.error("--batch, --rate, --fed and --feeders must be positive")

    work = Path(tempfile.mkdtemp(prefix="carecast-bench-realtime-"))
    try:
        fixture = build_fixture(work / "data", args.patients, args.days)
        print(f"feed: {args.rate:g} readings/s for {args.duration:g} s over {args.fed} in-house patients, "
              f"{args.batch} per FHIR batch Bundle, {args.feeders} feeder threads; server: carecast serve "
              f"--workers {SERVER_WORKERS}")
        outcomes = []
        if args.config in ("embedded", "both"):
            outcomes.append(run_embedded(fixture.data_dir, work, args))
            report(outcomes[-1], args)
        if args.config in ("scaled", "both"):
            outcomes.append(run_scaled(fixture.data_dir, work, args))
            report(outcomes[-1], args)
        print(f"\n{os.cpu_count()} CPUs shared by servers, scoring workers, feeder and listener; load average over "
              f"the last minute: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
