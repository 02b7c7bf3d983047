"""Serving throughput and latency: `carecast serve` (gunicorn, 2 workers) on 127.0.0.1 against its own ceiling
and against the same model behind MLflow's scoring server.

One run:

1. builds a temporary data dir: simulates a small hospital (no wearables), ingests it into SQLite, trains
   deterioration_24h (50 bootstrap resamples, one BLAS thread), creates a data_scientist (predict) and a
   clinician of the simulated hospital's Ward units (latest-risk GET), each with a bearer token, and scores
   a few ward patients so that the latest-risk GET has stored risks to return;
2. starts `carecast serve --port P --workers 2` on that data dir (OMP_NUM_THREADS=1; the rate limit raised
   so that it never answers 429, the limiter itself still runs) and waits for /readyz;
3. loads each endpoint at --connections keep-alive connections for --duration seconds in all, taken in
   --rounds slices in turn with the others (the order rotated each round), after a 1 s warm-up of each that
   is not counted, with `wrk` when it is on the PATH, else with http.client in one thread per connection
   recording every request's latency: `/livez` (the ceiling: no auth, no database, no model),
   `POST /api/v1/predict` (auth, a real feature row of one patient, audit) and
   `GET /api/v1/patients/<uid>/predictions` (auth, unit check, stored risks, audit). Why in turn: on a
   shared machine the servers' pace drifts over a minute (seen here: the same endpoint 10-25% apart in
   runs a minute apart), and an endpoint measured right after its reference met a different machine;
   taken in turn, each meets the same drift. req/s is every request over every second, p50 and p99 those of
   every request (wrk reports 17 percentiles and the max per run; the runs' distributions are mixed by their
   requests);
4. reference: saves the same fitted champion (the registry's model.joblib) as an MLflow sklearn model in a
   separate venv (benchmarks/.venv-mlflow, from requirements/bench-mlflow.txt, created on first use),
   serves it with `mlflow models serve --env-manager local --workers 2` and loads its `/invocations` with
   the same row (dataframe_split); if MLflow cannot be installed or served, says so and goes on;
5. prints req/s, p50 and p99 of each, the ratios, and whether the issue's targets are met (predict >= 50%
   of the ceiling's req/s, predict p99 <= 15 ms, predict >= 20x MLflow's req/s); and predict's share of the
   ceiling round by round (each round's predict slice over the ceiling slice loaded next to it), which shows
   how far the whole run's share moves with the machine: a share a few points from the target is met in
   some rounds and missed in others.

The load generator runs on the same machine as the servers and shares its cores (the line printed with
the CPU count says how many); with the Python client, one process drives every connection.
Not measured here: new reading to updated risk under 200 readings/s.

    python benchmarks/serving.py [--duration 10] [--rounds 5] [--connections 8] [--patients 300] [--days 8]
                                 [--skip-mlflow]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CARECAST = ROOT / ".venv" / "bin" / "carecast"
MLFLOW_VENV = ROOT / "benchmarks" / ".venv-mlflow"
MLFLOW_REQUIREMENTS = ROOT / "requirements" / "bench-mlflow.txt"
TASK = "deterioration_24h"
WORKERS = 2
WARM_UP_S = 1.0
SCORED_PATIENTS = 8
READY_TIMEOUT_S = 120.0
# High enough that no request of the run is refused (the issue measures serving, not the limiter's 429s).
RATE_LIMIT_PER_MINUTE = 100_000_000
TARGET_SHARE_OF_CEILING = 0.5
TARGET_P99_MS = 15.0
TARGET_VS_MLFLOW = 20.0

SAVE_MLFLOW_MODEL = """
import sys, joblib, mlflow.sklearn
model = joblib.load(sys.argv[1])
mlflow.sklearn.save_model(model, sys.argv[2], pyfunc_predict_fn="predict_proba", serialization_format="pickle")
"""


@dataclass(frozen=True)
class Fixture:
    data_dir: Path
    predict_token: str
    read_token: str
    read_uid: str
    features: dict[str, Any]  # the model's columns, in its order; None = missing
    model_file: Path  # the champion's model.joblib in the registry


@dataclass(frozen=True)
class Load:
    """One endpoint's load: how many requests were answered in how many seconds, and their latencies: every
    one (the Python client) or, from wrk, which reports percentiles only, its table of WRK_PERCENTILES and
    the max (`reported`)."""

    requests: int
    seconds: float
    errors: int
    first_error: str | None
    latencies_ms: np.ndarray | None = None
    reported: Mapping[float, float] | None = None  # percentile -> ms

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        if self.latencies_ms is not None:
            return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else math.nan
        if not self.reported:
            return math.nan
        qs = sorted(self.reported)
        return float(np.interp(q, qs, [self.reported[k] for k in qs]))

    def cdf(self, ms: np.ndarray) -> np.ndarray:
        """The share of requests (0-100) answered within each latency, read off wrk's percentiles."""
        qs = sorted(self.reported or {})
        at = np.maximum.accumulate([(self.reported or {})[k] for k in qs])  # rising, whatever a run reported
        return np.interp(ms, at, qs, left=0.0, right=100.0)

    @staticmethod
    def combine(parts: list[Load]) -> Load:
        """Several runs of one endpoint as one: every request over every second, and the percentiles of all
        their requests: exact with every latency; from wrk's percentiles per run, those of the runs'
        distributions mixed in proportion to their requests (each run's read between its percentiles)."""
        requests = sum(p.requests for p in parts)
        seconds = sum(p.seconds for p in parts)
        errors = sum(p.errors for p in parts)
        first_error = next((p.first_error for p in parts if p.first_error), None)
        if all(p.latencies_ms is not None for p in parts):
            every = np.concatenate([p.latencies_ms for p in parts if p.latencies_ms is not None])
            return Load(requests, seconds, errors, first_error, latencies_ms=every)
        grid = np.unique(np.concatenate([list((p.reported or {}).values()) for p in parts]))
        mixed = sum(p.requests * p.cdf(grid) for p in parts) / max(requests, 1)
        mixed = np.maximum.accumulate(mixed)  # monotone (it is, up to rounding)
        qs = sorted({q for p in parts for q in (p.reported or {})})
        return Load(requests, seconds, errors, first_error,
                    reported={q: float(np.interp(q, mixed, grid)) for q in qs})


# -- 1. the data dir ------------------------------------------------------------------------------------------

def _json_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def build_fixture(data_dir: Path, patients: int, days: float) -> Fixture:
    from sqlalchemy import select
    from threadpoolctl import threadpool_limits

    from carecast.config import Settings
    from carecast.features.builder import build_features
    from carecast.jobs.ingest import ingest_paths
    from carecast.jobs.training import run_training
    from carecast.models.registry import Registry
    from carecast.scoring.predictor import Predictor
    from carecast.scoring.scorer import current_encounter, latest_bedside_time, score_patient
    from carecast.security.permissions import ROLE_PERMISSIONS
    from carecast.security.tokens import issue_token
    from carecast.security.users import create_user
    from carecast.simulate import SimulationConfig, simulate
    from carecast.store import Store
    from carecast.store import schema as S
    from carecast.store.frames import load_frames

    settings = Settings.from_env({"CARECAST_DATA_DIR": str(data_dir), "CARECAST_ENV": "test"})
    t = time.perf_counter()
    sim = simulate(SimulationConfig(seed=0, patients=patients, days=days, wearable_share=0.0), data_dir / "sim")
    store = Store.open(settings)
    try:
        ingest_paths([data_dir / "sim"], store.writer())
        registry = Registry(settings.model_registry)
        with threadpool_limits(1):
            run = run_training(store, registry, TASK, n_boot=50)
        print(f"setup: {patients} patients x {days:g} days ({sim.n_prediction_points:,} ward vital-sign sets), "
              f"ingested, {TASK} trained ({run.result.report['chosen']}, {run.version}) "
              f"in {time.perf_counter() - t:.0f} s")

        frames = load_frames(store.engine, store.keyring)
        enc = frames.encounters
        wards = sorted({u for u in enc["unit"].dropna().unique() if "Ward" in str(u)})
        open_wards = enc[enc["discharged_at"].isna() & enc["unit"].isin(wards)]
        candidates = [int(p) for p in open_wards["patient_id"].unique()][:SCORED_PATIENTS]
        if not candidates:
            raise SystemExit("no patient is in a Ward unit at the end of the simulation; try more --patients")
        predictor = Predictor(registry, [TASK])
        for pid in candidates:
            score_patient(store, predictor, pid, tasks=[TASK])
        pid = candidates[0]
        at = latest_bedside_time(frames, pid)
        stay = current_encounter(frames.encounters, pid, at)
        if at is None or stay is None:
            raise SystemExit("the chosen ward patient has no bedside observation")
        query = pd.DataFrame({"patient_id": [pid], "encounter_id": [int(stay["encounter_id"])],
                              "t": [pd.Timestamp(at)]})
        row = build_features(frames, query).iloc[0]
        features = {name: _json_value(row[name]) for name in predictor.feature_names(TASK)}
        with store.engine.connect() as conn:
            uid = str(conn.execute(select(S.Patient.uid).where(S.Patient.id == pid)).scalar_one())

        scientist = create_user(store.engine, "bench-scientist", "bench-password-not-secret", "data_scientist")
        clinician = create_user(store.engine, "bench-clinician", "bench-password-not-secret", "clinician", wards)
        predict_token = issue_token(store.engine, scientist, "bench",
                                    [str(p) for p in ROLE_PERMISSIONS["data_scientist"]], ttl_hours=2)
        read_token = issue_token(store.engine, clinician, "bench", [str(p) for p in ROLE_PERMISSIONS["clinician"]],
                                 ttl_hours=2)
        version = registry.resolve(TASK, "champion")
        model_file = Path(settings.model_registry) / TASK / version / "model.joblib"
    finally:
        store.close()
    print(f"payload: {sum(v is not None for v in features.values())} of {len(features)} features present; "
          f"clinician of {', '.join(wards)}; {len(candidates)} ward patients scored")
    return Fixture(data_dir, predict_token, read_token, uid, features, model_file)


# -- 2. servers ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(cmd: list[str], env: Mapping[str, str], log: Path, ready_path: str, port: int) -> Iterator[None]:
    """Start `cmd` in its own process group, wait until GET ready_path answers 200, stop it on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} not ready after {READY_TIMEOUT_S:.0f} s:\n{_tail(log)}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", ready_path)
                if conn.getresponse().status == 200:
                    conn.close()
                    break
                conn.close()
            time.sleep(0.25)
        yield
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (graceful), SIGKILL after 15 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # stragglers of the group (gunicorn or uvicorn workers)
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def connection_split(port: int) -> list[int]:
    """Established connections on `port` per server process, largest first (empty without `ss`)."""
    if not shutil.which("ss"):
        return []
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=False).stdout
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


# -- 3. load ------------------------------------------------------------------------------------------------

def load(port: int, method: str, path: str, body: bytes | None, headers: Mapping[str, str], seconds: float,
         connections: int, *, warm_up: bool = True) -> Load:
    if shutil.which("wrk"):
        return load_wrk(port, method, path, body, headers, seconds, connections, warm_up=warm_up)
    if warm_up:
        load_python(port, method, path, body, headers, WARM_UP_S, connections)
    return load_python(port, method, path, body, headers, seconds, connections)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    body: bytes | None
    headers: Mapping[str, str]


def interleaved(port: int, endpoints: Mapping[str, Endpoint], seconds: float, rounds: int, connections: int,
                during: Mapping[str, Any] | None = None) -> dict[str, list[Load]]:
    """Each endpoint loaded for `seconds` in all, in `rounds` slices taken in turn (the order rotated every
    round so that each endpoint takes each place), after one warm-up of each that is not counted; each
    endpoint's slices in round order (`Load.combine` makes them one figure). On a shared machine the
    servers' pace drifts over a minute; taken in turn, an endpoint and its reference meet the same drift.
    `during[name]`: called once, in a thread, while that endpoint's first slice runs."""
    names = list(endpoints)
    for name in names:
        e = endpoints[name]
        load(port, e.method, e.path, e.body, e.headers, WARM_UP_S, connections, warm_up=False)
    slice_s = max(1.0, round(seconds / rounds))
    parts: dict[str, list[Load]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            e = endpoints[name]
            hook = (during or {}).get(name) if r == 0 else None
            timer = threading.Timer(min(1.0, slice_s / 2), hook) if hook is not None else None
            if timer is not None:
                timer.start()
            parts[name].append(load(port, e.method, e.path, e.body, e.headers, slice_s, connections, warm_up=False))
            if timer is not None:
                timer.join()
    return parts


def round_shares(runs: list[Load], reference: list[Load]) -> list[float]:
    """Each round's req/s over the reference's in the same round (the two loaded within seconds of each other):
    how far the ratio of the whole run moves from round to round on this machine."""
    return [run.rate / ref.rate for run, ref in zip(runs, reference, strict=True)]


def load_python(port: int, method: str, path: str, body: bytes | None, headers: Mapping[str, str],
                seconds: float, connections: int) -> Load:
    start = threading.Barrier(connections + 1)
    results: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    first_error: list[str] = []
    deadline = [0.0]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = results[i]
        start.wait()
        while (t0 := time.perf_counter()) < deadline[0]:
            try:
                conn.request(method, path, body=body, headers=dict(headers))
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                errors[i] += 1
                first_error.append(type(exc).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            elapsed = time.perf_counter() - t0
            if 200 <= response.status < 300:
                mine.append(elapsed)
            else:
                errors[i] += 1
                first_error.append(f"{response.status} {payload[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(connections)]
    for th in threads:
        th.start()
    t_start = time.perf_counter()
    deadline[0] = t_start + seconds
    start.wait()
    for th in threads:
        th.join()
    took = time.perf_counter() - t_start
    latencies = np.array([x for r in results for x in r]) * 1000.0
    return Load(len(latencies), took, sum(errors), first_error[0] if first_error else None, latencies_ms=latencies)


WRK_SCRIPT = """
wrk.method = "{method}"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  io.write("BENCH " .. summary.requests .. " " .. summary.duration .. " " .. (summary.errors.status
           + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  for _, p in ipairs({{{percentiles}}}) do io.write(" " .. p .. "=" .. latency:percentile(p)) end
  io.write(" 100=" .. latency.max .. "\\n")  -- wrk's percentile(100) answers 0
end
"""
# The percentiles asked of each wrk run, from which runs are combined (Load.combine).
WRK_PERCENTILES = (0.1, 1, 5, 10, 25, 50, 75, 90, 95, 97, 98, 98.5, 99, 99.25, 99.5, 99.75, 99.9)  # and the max


def load_wrk(port: int, method: str, path: str, body: bytes | None, headers: Mapping[str, str], seconds: float,
             connections: int, *, warm_up: bool = True) -> Load:
    """wrk reports percentiles, not each latency: the Load carries the WRK_PERCENTILES it reported and the max."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT.format(method=method, body=json.dumps((body or b"").decode()),
                                   percentiles=", ".join(f"{q:g}" for q in WRK_PERCENTILES),
                                   headers="\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                                                     for k, v in headers.items())))
    try:
        url = f"http://127.0.0.1:{port}{path}"
        base = ["wrk", "-t", str(min(connections, os.cpu_count() or 1)), "-c", str(connections), "-s", fh.name]
        if warm_up:
            subprocess.run([*base, "-d", f"{WARM_UP_S:.0f}s", url], check=True, capture_output=True)
        out = subprocess.run([*base, "-d", f"{seconds:.0f}s", url], check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(fh.name)
    found = re.search(r"BENCH (\d+) (\d+) (\d+)((?: [\d.]+=[\d.]+)+)", out)
    if not found:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    n, micros, errors, table = found.groups()
    reported = {float(q): float(us) / 1000.0 for q, us in (pair.split("=") for pair in table.split())}
    return Load(max(int(n) - int(errors), 0), int(micros) / 1e6, int(errors), None, reported=reported)


# -- 4. MLflow ----------------------------------------------------------------------------------------------

def mlflow_python() -> Path:
    """The benchmark-only venv with MLflow, created and installed on first use."""
    python = MLFLOW_VENV / "bin" / "python"
    if not (MLFLOW_VENV / "bin" / "mlflow").exists():
        print(f"creating {MLFLOW_VENV.relative_to(ROOT)} from {MLFLOW_REQUIREMENTS.relative_to(ROOT)} ...")
        subprocess.run(["python3", "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                        str(MLFLOW_REQUIREMENTS)], check=True)
    return python


def bench_mlflow(fixture: Fixture, work: Path, args: argparse.Namespace) -> Load:
    python = mlflow_python()
    model_dir = work / "mlflow-model"
    # MLflow starts `uvicorn` by name: its venv's bin goes first on the PATH.
    env = {**os.environ, "PATH": f"{MLFLOW_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"file://{work / 'mlruns'}"}
    # The pickle names carecast's own estimator classes: PYTHONPATH=src lets MLflow's venv unpickle them.
    subprocess.run([str(python), "-c", SAVE_MLFLOW_MODEL, str(fixture.model_file), str(model_dir)], env=env,
                   check=True, capture_output=True, text=True)
    port = free_port()
    cmd = [str(MLFLOW_VENV / "bin" / "mlflow"), "models", "serve", "-m", str(model_dir), "-h", "127.0.0.1",
           "-p", str(port), "--env-manager", "local", "--workers", str(WORKERS)]
    columns = list(fixture.features)
    body = json.dumps({"dataframe_split": {"columns": columns, "data": [[fixture.features[c] for c in columns]]}})
    with running(cmd, env, work / "mlflow.log", "/ping", port):
        check = _request(port, "POST", "/invocations", body.encode(), {"Content-Type": "application/json"})
        print(f"MLflow /invocations answers {check}")
        return load(port, "POST", "/invocations", body.encode(), {"Content-Type": "application/json"},
                    args.duration, args.connections)


def _request(port: int, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=dict(headers))
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        raise RuntimeError(f"{method} {path}: {response.status} {text[:300]}")
    return text[:160] + ("..." if len(text) > 160 else "")


# -- 5. report ----------------------------------------------------------------------------------------------

def line(name: str, result: Load) -> None:
    errors = f"  {result.errors} errors (first: {result.first_error})" if result.errors else ""
    print(f"{name:<40}{result.rate:>10,.0f}{result.pct(50):>10.2f}{result.pct(99):>10.2f}"
          f"{result.requests:>10,}{errors}")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per endpoint, in all")
    parser.add_argument("--rounds", type=int, default=5, help="slices each endpoint's load is taken in, in turn")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--days", type=float, default=8.0)
    parser.add_argument("--skip-mlflow", action="store_true", help="no MLflow reference")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="carecast-bench-serving-"))
    try:
        fixture = build_fixture(work / "data", args.patients, args.days)
        port = free_port()
        env = {**os.environ, "CARECAST_DATA_DIR": str(fixture.data_dir), "CARECAST_ENV": "test",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "CARECAST_RATE_LIMIT": str(RATE_LIMIT_PER_MINUTE)}
        for name in ("CARECAST_DATABASE_URL", "CARECAST_KEY_FILE", "CARECAST_MODEL_REGISTRY", "CARECAST_QUEUE_URL",
                     "CARECAST_EVENTS_URL", "CARECAST_DATA_KEY"):
            env.pop(name, None)
        predict_body = json.dumps({"task": TASK, "features": fixture.features}).encode()
        auth_json = {"Authorization": f"Bearer {fixture.predict_token}", "Content-Type": "application/json"}
        auth_read = {"Authorization": f"Bearer {fixture.read_token}"}
        read_path = f"/api/v1/patients/{fixture.read_uid}/predictions"
        client = "wrk" if shutil.which("wrk") else "Python http.client, one thread per connection"
        print(f"load: {args.connections} keep-alive connections, {args.duration:g} s per endpoint in {args.rounds} "
              f"interleaved rounds after {WARM_UP_S:g} s warm-up; client: {client}; server: carecast serve "
              f"--workers {WORKERS}")
        cmd = [str(CARECAST), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)]
        split: list[list[int]] = []
        with running(cmd, env, work / "carecast.log", "/readyz", port):
            print(f"predict answers {_request(port, 'POST', '/api/v1/predict', predict_body, auth_json)}")
            print(f"latest-risk GET answers {_request(port, 'GET', read_path, None, auth_read)}")
            rounds = interleaved(port, {
                "ceiling": Endpoint("GET", "/livez", None, {}),
                "predict": Endpoint("POST", "/api/v1/predict", predict_body, auth_json),
                "latest": Endpoint("GET", read_path, None, auth_read),
            }, args.duration, args.rounds, args.connections,
                during={"predict": lambda: split.append(connection_split(port))})
            results = {name: Load.combine(runs) for name, runs in rounds.items()}

        mlflow: Load | None = None
        if args.skip_mlflow:
            print("MLflow reference: skipped (--skip-mlflow)")
        else:
            try:
                mlflow = bench_mlflow(fixture, work, args)
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                detail = getattr(exc, "stderr", None) or str(exc)
                print(f"MLflow reference: NOT MEASURED, MLflow could not be installed or served here:\n{detail}")

        print()
        header = f"{'endpoint':<40}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}"
        print(header)
        print("-" * len(header))
        line("GET /livez (ceiling)", results["ceiling"])
        line("POST /api/v1/predict", results["predict"])
        line("GET /api/v1/patients/<uid>/predictions", results["latest"])
        if mlflow is not None:
            line("MLflow POST /invocations (same model)", mlflow)
        ceiling, predict, latest = results["ceiling"], results["predict"], results["latest"]
        print()
        share = predict.rate / ceiling.rate
        print(f"predict / ceiling req/s:     {share:6.1%}   (target >= {TARGET_SHARE_OF_CEILING:.0%}: "
              f"{verdict(share >= TARGET_SHARE_OF_CEILING)})")
        shares = round_shares(rounds["predict"], rounds["ceiling"])
        print(f"  the same, round by round:  {', '.join(f'{r:.1%}' for r in shares)} "
              f"({sum(r >= TARGET_SHARE_OF_CEILING for r in shares)} of {len(shares)} at the target or above)")
        print(f"latest-risk GET / ceiling:   {latest.rate / ceiling.rate:6.1%}")
        print(f"predict p99:                 {predict.pct(99):6.2f} ms (target <= {TARGET_P99_MS:g} ms: "
              f"{verdict(predict.pct(99) <= TARGET_P99_MS)})")
        if mlflow is not None:
            ratio = predict.rate / mlflow.rate
            print(f"predict / MLflow req/s:      {ratio:6.1f}x  (target >= {TARGET_VS_MLFLOW:g}x: "
                  f"{verdict(ratio >= TARGET_VS_MLFLOW)}); p50 {mlflow.pct(50) / predict.pct(50):.1f}x lower")
        else:
            print(f"predict / MLflow req/s:      not measured (target >= {TARGET_VS_MLFLOW:g}x: UNKNOWN)")
        print("new reading to updated risk p99 (target <= 1 s at 200 readings/s): not measured by this benchmark")
        if split and split[0]:
            print(f"predict's connections per server worker (ss, mid-run): {'/'.join(map(str, split[0]))}")
        print(f"{os.cpu_count()} CPUs shared by servers and client; load average over the last minute: "
              f"{os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
