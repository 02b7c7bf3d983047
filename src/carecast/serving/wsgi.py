"""Run the API under gunicorn from Python: one worker per core, OMP threads 1, graceful shutdown in 10 s.

Each worker process builds its own app (and, when given a worker factory, its own embedded scoring worker).
Live streams hold a request thread each, so a worker has `THREADS` of them; on SIGTERM (graceful stop),
SIGINT or SIGQUIT the app's streams end at once and its scoring worker stops, so a worker exits well within
the graceful timeout instead of waiting for its open streams.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from carecast.monitoring.logs import lean_records

GRACEFUL_TIMEOUT_S = 10
THREADS = 16  # request threads per worker: live streams (at most stream.MAX_STREAMS) and ordinary requests
MAX_BACKLOG_ACCEPTED = 1024  # connections taken from the listen queue at a graceful stop, at most


def _app_of(worker: Any) -> Any:
    from flask import Flask

    app = getattr(worker, "wsgi", None)
    return app if isinstance(app, Flask) else None


def post_worker_init(worker: Any) -> None:
    """Once the worker's app is loaded: freeze what is loaded out of the garbage collector's way, and chain
    the worker's SIGTERM handler: end the app's live streams first (they would hold the graceful stop for
    its whole timeout), then let gunicorn stop as usual.

    An app with its models, pandas and scikit-learn holds about 260,000 objects that live as long as the
    worker; each full collection walked all of them, stopping every request thread for 50-230 ms (timed
    with `gc.collect(2)` after `app_from_env()`). `gc.freeze` moves them to a generation the collector
    never scans; what requests create is collected as before."""
    gc.collect()
    gc.freeze()
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        # Run by the worker's main loop, not here: the signal may have interrupted that loop inside its own
        # accept, whose thread-pool lock is not re-entrant.
        defer = getattr(getattr(worker, "method_queue", None), "defer", None)
        if callable(defer):
            defer(_accept_backlog, worker)
        app = _app_of(worker)
        if app is not None:
            from carecast.serving.app import begin_shutdown

            begin_shutdown(app)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def _accept_backlog(worker: Any) -> None:
    """Accept the connections already waiting in the listen queue when the stop begins: gunicorn stops
    accepting and later closes the listener, which resets every connection still queued there, though the
    kernel completed it (and its client sent the request) before the signal. Accepted now, they are served
    within the graceful timeout like the requests in flight. (A gthread worker's `accept` takes one connection
    and hands it to its threads, and its main loop runs what `method_queue.defer` queues; other worker classes
    have neither and are left as they are.)"""
    accept = getattr(worker, "accept", None)
    if not callable(accept):
        return
    for listener in getattr(worker, "sockets", []):
        for _ in range(MAX_BACKLOG_ACCEPTED):
            try:
                waiting, _, _ = select.select([listener], [], [], 0)
                if not waiting:
                    break
                accept(listener)  # another worker may have taken it first: accept then finds none, harmlessly
            except (OSError, ValueError):  # a listener already closed
                break


def worker_int(worker: Any) -> None:
    """SIGINT or SIGQUIT (Ctrl-C): the worker exits at once; end its streams and its scoring worker first."""
    worker_exit(None, worker)


def prepare_metrics_dir(path: Path) -> Path:
    """An empty directory where each worker process writes its metric values, exported as
    PROMETHEUS_MULTIPROC_DIR for the workers to inherit (a restart starts from zero, not from the old run's
    counts). Must run before anything imports carecast.monitoring.metrics in this process: prometheus_client
    chooses between in-process and multiprocess values when the metrics are created."""
    if "carecast.monitoring.metrics" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("prepare_metrics_dir must run before carecast.monitoring.metrics is imported")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def child_exit(_server: Any, worker: Any) -> None:
    """In the master: a worker has exited; its live gauges leave the merged metrics and its place in the
    connection table is free."""
    BalancedThreadWorker.release_slot(worker.pid)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from carecast.monitoring.metrics import mark_process_dead

        mark_process_dead(worker.pid)


def worker_exit(_server: Any, worker: Any) -> None:
    app = _app_of(worker)
    if app is not None:
        from carecast.serving.app import shutdown

        shutdown(app)


MAX_WORKERS_BALANCED = 64  # workers per host whose connections are balanced (more run unbalanced)
DEFER_AT_MOST_S = 0.005  # how long a worker leaves a new connection to its less busy siblings, at most
DEFER_PAUSE_S = 0.0002
LOCK_WAIT_S = 1.0
LINGER_S = 0.1  # how long a request thread waits on its keep-alive connection for the next request
LINGER_RESERVE_THREADS = 4  # request threads never held lingering: free for new connections and streams


class BalancedThreadWorker(ThreadWorker):
    """gunicorn's threaded worker, taking new connections in turn with its siblings.

    Every worker waits on the one listening socket and the first to wake accepts. A client that opens
    its keep-alive connections together (a load balancer, an EHR's pool, a load test) often has them all
    taken by one worker, which then serves every request on one core while the other idles: measured with
    8 connections on 2 workers, POST /api/v1/predict ran at 413 req/s with the connections split 8/0 and
    635-675 req/s split 4/4 (benchmarks/serving.py, one machine). So each worker publishes its open
    connections in memory shared by the master's children, and one that holds more than its least busy
    live sibling leaves a new connection for DEFER_AT_MOST_S (a sibling that is booting, busy or gone
    does not hold it up longer) before taking it anyway. With no sibling, or more than
    MAX_WORKERS_BALANCED workers, it behaves as gunicorn's own."""

    _pids: Any = None  # shared arrays, made in the master by `setup` and inherited by every forked worker
    _conns: Any = None
    _lock: Any = None

    @classmethod
    def setup(cls) -> None:
        if cls._pids is None:
            cls._pids = multiprocessing.RawArray(ctypes.c_int, MAX_WORKERS_BALANCED)
            cls._conns = multiprocessing.RawArray(ctypes.c_int, MAX_WORKERS_BALANCED)
            cls._lock = multiprocessing.Lock()

    def init_process(self) -> None:
        self._occupied = 0  # request threads serving a connection (lingering on one included)
        self._occupied_lock = threading.Lock()
        self._slot = self.claim_slot(os.getpid())
        self._deferring_since: float | None = None
        super().init_process()  # loads the app, then runs the loop until the worker stops

    @classmethod
    def claim_slot(cls, pid: int) -> int | None:
        """This process's place in the shared table: a free one, or one whose process is gone. None (no
        balancing) when the table is full or its lock is not free within a second (a process killed while
        holding it)."""
        if cls._pids is None or not cls._lock.acquire(timeout=LOCK_WAIT_S):
            return None
        try:
            for i in range(MAX_WORKERS_BALANCED):
                if cls._pids[i] == 0 or not _alive(cls._pids[i]):
                    cls._pids[i], cls._conns[i] = pid, 0
                    return i
            return None
        finally:
            cls._lock.release()

    @classmethod
    def release_slot(cls, pid: int) -> None:
        """Free the place of `pid` (run by the master when it reaps a worker: it must never hang here, so
        without the lock after a second; clearing one's own place races with nobody)."""
        if cls._pids is None:
            return
        locked = cls._lock.acquire(timeout=LOCK_WAIT_S)
        try:
            for i in range(MAX_WORKERS_BALANCED):
                if cls._pids[i] == pid:
                    cls._pids[i], cls._conns[i] = 0, 0
        finally:
            if locked:
                cls._lock.release()

    @classmethod
    def least_busy_sibling(cls, slot: int) -> int | None:
        """The fewest open connections of another worker (None when there is none)."""
        least = None
        for i in range(MAX_WORKERS_BALANCED):
            if i != slot and cls._pids[i] != 0:
                n = cls._conns[i]
                least = n if least is None or n < least else least
        return least

    def should_defer(self, now: float) -> bool:
        if self._slot is None or not self.alive:  # stopping: take what is queued (see _accept_backlog)
            return False
        least = self.least_busy_sibling(self._slot)
        if least is None or self.nr_conns <= least:
            self._deferring_since = None
            return False
        if self._deferring_since is None:
            self._deferring_since = now
        return now - self._deferring_since < DEFER_AT_MOST_S

    def accept(self, listener: Any) -> None:
        if self.should_defer(time.monotonic()):
            time.sleep(DEFER_PAUSE_S)  # the connection stays queued; the loop comes back to it
            return
        self._deferring_since = None
        super().accept(listener)
        self._publish()

    def handle(self, conn: Any) -> Any:
        """Serve a connection in this request thread for as long as its client keeps sending.

        gunicorn's threaded worker hands a keep-alive connection back to the main thread after each answer:
        the request thread queues a callback and writes to a pipe, the main thread wakes, registers the
        socket with its poller, wakes again when the next request arrives and queues it to the pool, whose
        thread wakes in turn. On a busy worker every one of those wake-ups waits for the interpreter lock
        and the cores: measured with 8 connections on 2 workers, the hand-off took 1.2 ms at the median and
        7.5 ms at p99 per request (a predict request itself needed 1.1 ms of CPU). So after a keep-alive
        answer the thread waits here, up to LINGER_S, for the connection's next request, and serves it
        itself; a quiet connection goes back to the poller as before. Threads wait so only while
        LINGER_RESERVE_THREADS others stay free (new connections, live streams), never on a stopping worker
        (which answers with "Connection: close" from gunicorn's own path), never on HTTP/2."""
        with self._occupied_lock:
            self._occupied += 1
        try:
            result = super().handle(conn)
            while result is True and self.may_linger(conn) and _next_request_within(conn, LINGER_S):
                result = super().handle(conn)
            return result
        finally:
            with self._occupied_lock:
                self._occupied -= 1

    def may_linger(self, conn: Any) -> bool:
        return (self.alive and not getattr(conn, "is_http2", False)
                and self._occupied + LINGER_RESERVE_THREADS <= self.cfg.threads)

    def notify(self) -> None:  # called on every turn of the worker's loop
        super().notify()
        self._publish()

    def _publish(self) -> None:
        slot = getattr(self, "_slot", None)
        if slot is not None:
            self._conns[slot] = self.nr_conns


def _next_request_within(conn: Any, seconds: float) -> bool:
    """Whether the connection has bytes to read (or was closed by its client) within `seconds`."""
    if conn.parser.unreader.buf.getvalue():  # read ahead with the previous request's body (as gunicorn checks)
        return True
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(seconds * 1000.0))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CareCastServer(BaseApplication):
    def __init__(self, options: dict[str, Any], app_factory: Callable[[], Any] | None = None) -> None:
        self.options = options
        self.app_factory = app_factory
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        if self.app_factory is not None:
            return self.app_factory()
        from carecast.serving.app import app_from_env

        return app_from_env()


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int | None = None,
          app_factory: Callable[[], Any] | None = None) -> None:
    """Serve until stopped. `app_factory` builds each worker's app (default: `app_from_env()`, which runs
    no scoring worker; `carecast serve` hands in one that does)."""
    # Model inference and numpy must not oversubscribe the cores the workers already share.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    lean_records()  # every request logs a line: no caller, thread or process lookups for it
    CareCastServer({
        "bind": f"{host}:{port}", "workers": workers or os.cpu_count() or 1, "worker_class": BalancedThreadWorker,
        "threads": THREADS, "graceful_timeout": GRACEFUL_TIMEOUT_S, "timeout": 30, "accesslog": None,
        "preload_app": False, "post_worker_init": post_worker_init, "worker_int": worker_int,
        "worker_exit": worker_exit, "child_exit": child_exit,
    }, app_factory).run()
