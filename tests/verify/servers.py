"""What the reliability proofs (tests/verify/test_reliability.py) share: a data dir built once and copied per
test, `carecast serve` / `carecast worker` processes that can be killed, restarted or signalled, a private
PostgreSQL instance that can be stopped, and HTTP clients (a retrying ingester, a paced mixed load).

The data dir, the users, the readings and the server command come from the benchmarks
(`benchmarks/serving.py` `build_fixture`, `benchmarks/realtime.py` `make_plan`, `bundle`, `serve_cmd`), imported
here rather than copied, so that the proofs run the same set-up as the measurements.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
bench: Any = importlib.import_module("serving")  # benchmarks/serving.py
realtime: Any = importlib.import_module("realtime")  # benchmarks/realtime.py

TASK = "deterioration_24h"
CARECAST = bench.CARECAST
START_LIMIT_S = 180.0  # a process not ready by then has failed (a loaded 2-core machine starts slowly)
FED = 20  # in-house patients who receive the readings posted by the tests


# -- the data dir ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Template:
    """A data dir (SQLite store, key file, model registry with a champion and a second version) built once."""

    data_dir: Path
    fixture: Any  # benchmarks/serving.py Fixture: predict and read tokens, a feature row, a ward patient uid
    plan: Any  # benchmarks/realtime.py Plan: the fed patients, a nurse token (ingest) and a clinician token
    other_version: str  # a second model version of TASK, never champion in the template

    @property
    def sim_dir(self) -> Path:
        return self.data_dir / "sim"


def build_template(root: Path, patients: int = 200, days: float = 6.0) -> Template:
    from carecast.config import Settings
    from carecast.models.registry import Registry

    data_dir = root / "data"
    fixture = bench.build_fixture(data_dir, patients, days)
    plan = realtime.make_plan(Settings.from_env(realtime.base_env(data_dir)), data_dir / "sim", FED)
    registry = Registry(data_dir / "models")
    champion = registry.load(TASK, "champion")
    time.sleep(1.1)  # versions are named by the second they were saved in
    kept = {k: v for k, v in champion.card.items() if k not in ("version", "model_sha256", "saved_at", "task")}
    other = registry.save(TASK, champion.estimator, {**kept, "note": "re-saved copy for the promotion test"})
    return Template(data_dir=data_dir, fixture=fixture, plan=plan, other_version=other)


def copy_data_dir(template: Template, dest: Path) -> Path:
    """A private copy of the template's data dir (the store, keys and registry), without old metrics."""
    shutil.copytree(template.data_dir, dest, ignore=shutil.ignore_patterns("metrics"))
    return dest


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env: dict[str, str] = realtime.base_env(data_dir)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def expected_scores(store: Any) -> dict[int, datetime]:
    """Each patient's expected score time in a store: the latest bedside observation (else the current stay's
    admission), for every patient with an encounter (the scorer's rule, recomputed from the frames)."""
    import pandas as pd

    from carecast.scoring.scorer import current_encounter, latest_bedside_time
    from carecast.store.frames import load_frames

    frames = load_frames(store.engine, store.keyring)
    out: dict[int, datetime] = {}
    for pid in frames.patients["patient_id"]:
        t = latest_bedside_time(frames, int(pid))
        stay = current_encounter(frames.encounters, int(pid), t)
        if stay is None:
            continue
        out[int(pid)] = t if t is not None else pd.Timestamp(stay["admitted_at"]).tz_convert("UTC").to_pydatetime()
    return out


# -- processes ---------------------------------------------------------------------------------------------

@dataclass
class Proc:
    """A `carecast` command in its own process group (gunicorn's workers share it), its output in a log."""

    args: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"{self.args[1]} exited with {self.popen.returncode if self.popen else None}:\n"
                                 f"{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill9(self) -> None:
        """SIGKILL to the whole process group (gunicorn master and workers at once), and reap it."""
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def signal(self, signum: int) -> None:
        """A signal to the command's own process (the gunicorn master for `carecast serve`)."""
        assert self.popen is not None
        os.kill(self.popen.pid, signum)

    def stop(self) -> None:
        if self.popen is not None:
            bench.stop(self.popen)


def serve(env: Mapping[str, str], log: Path, port: int, workers: int | None = None) -> Proc:
    """`carecast serve --workers 2` (the benchmarks' command; or `workers`) started, not yet waited for."""
    args = realtime.serve_cmd(port)
    if workers is not None:
        args[args.index("--workers") + 1] = str(workers)
    return Proc(args, dict(env), log).start()


def worker(env: Mapping[str, str], log: Path) -> Proc:
    return Proc([str(CARECAST), "worker"], dict(env), log).start()


def wait_ready(port: int, proc: Proc, limit: float = START_LIMIT_S) -> None:
    deadline = time.monotonic() + limit
    while True:
        proc.check_alive()
        if get(port, "/readyz", timeout=5)[0] == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"server not ready within {limit:.0f} s:\n{proc.tail()}")
        time.sleep(0.25)


def wait_until(condition: Callable[[], bool], what: str, limit: float = START_LIMIT_S, every: float = 0.2,
               alive: tuple[Proc, ...] = ()) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        for p in alive:
            p.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {limit:.0f} s")
        time.sleep(every)


# -- a private PostgreSQL ----------------------------------------------------------------------------------

class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb into a temporary directory, trust auth, a free port) that a test
    may stop and start without touching the machine's shared server. PostgreSQL refuses to run as root: as
    root the cluster belongs to the `postgres` user and its commands run through `runuser`."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bin = found[-1].parent
        # its own directory under the system temp dir: pytest's are private to the user running the tests
        self.root = Path(tempfile.mkdtemp(prefix="carecast-pg-"))
        self.data = self.root / "pgdata"
        self.port = bench.free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bin / tool), *args], capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-500:]}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, as when a database server goes down."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# -- HTTP --------------------------------------------------------------------------------------------------

def request(port: int, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
            timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (no keep-alive: a server's restart or reload never meets a stale one).
    Raises OSError or http.client.HTTPException when no answer came."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={**(headers or {}), "Connection": "close"})
        response = conn.getresponse()
        payload = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
    finally:
        conn.close()


def get(port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        status, _, body = request(port, "GET", path, None, headers, timeout)
    except (OSError, http.client.HTTPException):
        return 0, b""
    return status, body


@dataclass
class Readings:
    """Fresh readings of the fed patients as FHIR `batch` Bundles (benchmarks/realtime.py `bundle`), each with
    its own Observation id and a data time one second after the previous one."""

    plan: Any
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _all: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._all = realtime.readings_for(self.plan, 200_000)
        self.first_time = self._all[0].data_time

    def take(self, n: int) -> tuple[int, bytes]:
        """The next `n` readings as one bundle: (index of the first, body)."""
        with self._lock:
            first = self._next
            self._next += n
        chunk = self._all[first : first + n]
        return first, realtime.bundle(self.plan, chunk, first, self.run, random.Random(first))

    def ids(self, first: int, n: int) -> list[str]:
        return [f"rt-{self.run}-{i}" for i in range(first, first + n)]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.plan.nurse_token}", "Content-Type": "application/fhir+json"}


@dataclass
class Result:
    kind: str
    due: float  # perf_counter when it was scheduled
    sent: float  # ... when it was sent
    done: float  # ... when its answer (or its failure) came
    status: int  # 0: no answer
    error: str | None = None
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


RequestMaker = Callable[[int], tuple[str, str, str, bytes | None, Mapping[str, str]]]  # i -> kind, method, path...


def paced(port: int, rate: float, seconds: float, make: RequestMaker, threads: int = 48,
          on_start: Callable[[float], None] | None = None) -> list[Result]:
    """Open-loop load: request i is due at start + i / rate and sent then (or as soon as a client thread is
    free, when all are busy: the wait counts in its latency from `due`)."""
    total = round(rate * seconds)
    results: list[Result | None] = [None] * total
    counter = iter(range(total))
    lock = threading.Lock()
    start = time.perf_counter() + 0.1

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            due = start + i / rate
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            kind, method, path, body, headers = make(i)
            sent = time.perf_counter()
            try:
                status, got, _ = request(port, method, path, body, headers)
                results[i] = Result(kind, due, sent, time.perf_counter(), status, None if status < 300 else str(status),
                                    got.get("retry-after"))
            except (OSError, http.client.HTTPException) as exc:
                results[i] = Result(kind, due, sent, time.perf_counter(), 0, type(exc).__name__)

    pool = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for th in pool:
        th.start()
    if on_start is not None:
        on_start(start)
    for th in pool:
        th.join()
    return [r for r in results if r is not None]


def summary(results: list[Result], seconds: float) -> dict[str, float]:
    """Achieved rate, errors, and latency percentiles in ms (from the scheduled time, so a server that falls
    behind shows it, and from the send)."""
    ok = [r for r in results if r.ok]
    from_due = np.array([r.done - r.due for r in ok]) * 1000.0
    from_sent = np.array([r.done - r.sent for r in ok]) * 1000.0
    span = (max(r.done for r in results) - min(r.due for r in results)) if results else seconds

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if len(a) else float("nan")

    return {"requests": float(len(results)), "ok": float(len(ok)), "errors": float(len(results) - len(ok)),
            "rate": len(ok) / max(span, seconds), "p50": pct(from_sent, 50), "p99": pct(from_sent, 99),
            "p99_due": pct(from_due, 99)}


@contextlib.contextmanager
def background(target: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    """Run `target(stop)` in a thread until the block ends."""
    stop = threading.Event()
    th = threading.Thread(target=target, args=(stop,), daemon=True)
    th.start()
    try:
        yield stop
    finally:
        stop.set()
        th.join(60)
