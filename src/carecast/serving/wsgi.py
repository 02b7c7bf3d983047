"""Run the API under gunicorn from Python: one worker per core, OMP threads 1, graceful shutdown in 10 s.

Each worker process builds its own app (and, when given a worker factory, its own embedded scoring worker).
Live streams hold a request thread each, so a worker has `THREADS` of them; on SIGTERM (graceful stop),
SIGINT or SIGQUIT the app's streams end at once and its scoring worker stops, so a worker exits well within
the graceful timeout instead of waiting for its open streams.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

GRACEFUL_TIMEOUT_S = 10
THREADS = 16  # request threads per worker: live streams (at most stream.MAX_STREAMS) and ordinary requests
MAX_BACKLOG_ACCEPTED = 1024  # connections taken from the listen queue at a graceful stop, at most


def _app_of(worker: Any) -> Any:
    from flask import Flask

    app = getattr(worker, "wsgi", None)
    return app if isinstance(app, Flask) else None


def post_worker_init(worker: Any) -> None:
    """Chain the worker's SIGTERM handler: end the app's live streams first (they would hold the graceful
    stop for its whole timeout), then let gunicorn stop as usual."""
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
    """In the master: a worker has exited; its live gauges leave the merged metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from carecast.monitoring.metrics import mark_process_dead

        mark_process_dead(worker.pid)


def worker_exit(_server: Any, worker: Any) -> None:
    app = _app_of(worker)
    if app is not None:
        from carecast.serving.app import shutdown

        shutdown(app)


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
    CareCastServer({
        "bind": f"{host}:{port}", "workers": workers or os.cpu_count() or 1, "worker_class": "gthread",
        "threads": THREADS, "graceful_timeout": GRACEFUL_TIMEOUT_S, "timeout": 30, "accesslog": None,
        "preload_app": False, "post_worker_init": post_worker_init, "worker_int": worker_int,
        "worker_exit": worker_exit, "child_exit": child_exit,
    }, app_factory).run()
