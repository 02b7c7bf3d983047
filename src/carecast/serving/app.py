"""The app factory: `create_app(settings)` builds the Flask app, its services and its routes.

Tests hand in their own store, predictor, queue and bus; otherwise they are built from the settings.
The API authenticates with bearer tokens only; the web UI (`serving.ui`) adds a session key and cookie.
An app whose views do not all declare a permission (or `@public`) is refused at creation.

The embedded default (no `CARECAST_QUEUE_URL`) scores inside the API process: given a `worker_factory`
(`carecast.jobs.worker.WorkerThread`; serving may not import jobs, so the caller hands it in), an app that
built its own database queue starts one scoring worker thread. Several processes each running one is safe
(the queue leases its jobs). `shutdown(app)` ends the live streams and stops that worker.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, Protocol

import orjson
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider, JSONProvider

from carecast.config import Settings
from carecast.errors import ConfigError
from carecast.models.registry import Registry
from carecast.models.tasks import TASKS
from carecast.monitoring.logs import configure_logging
from carecast.security.audit import AuditLog
from carecast.serving import errors, health
from carecast.serving.api_v1 import MAX_INGEST_BYTES
from carecast.serving.api_v1 import bp as api_v1
from carecast.serving.auth import check_declared
from carecast.serving.cds_hooks import bp as cds_hooks
from carecast.serving.context import EXTENSION, BusLike, PredictorLike, QueueLike, Services
from carecast.serving.context import init_app as init_context
from carecast.serving.headers import init_app as init_headers
from carecast.serving.observability import init_app as init_observability
from carecast.serving.ratelimit import Limiter, RedisLimiter, TokenBucketLimiter
from carecast.serving.stream import bp as stream_bp
from carecast.serving.stream import hub_of
from carecast.serving.stream import init_app as init_stream
from carecast.serving.ui import init_app as init_ui
from carecast.store import Store

WORKER_EXTENSION = "carecast.worker"
WORKER_STOP_S = 5.0

# The live stream is part of API v1 (its URL prefix, its OpenAPI document): a blueprint nested in it.
api_v1.register_blueprint(stream_bp)


class BackgroundWorker(Protocol):
    """What the app needs of the embedded scoring worker (carecast.jobs.worker.WorkerThread)."""

    def start(self) -> Any: ...

    def stop(self, timeout: float = ...) -> None: ...


# (store, predictor, queue, bus) -> a worker not yet started; WorkerThread has this signature.
WorkerFactory = Callable[[Store, Any, Any, Any], BackgroundWorker]


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime | date):
        return o.isoformat()
    return DefaultJSONProvider.default(o)  # Decimal, UUID, dataclasses, __html__; TypeError for the rest


class _JSONProvider(JSONProvider):
    """Flask's JSON through orjson: ISO 8601 times (Flask's default is RFC 822), keys in the order the views
    build them, NaN as null (never the invalid `NaN`), UTF-8 rather than escapes. orjson encodes in a fifth
    of the standard library's time, which every answer of the API pays (benchmarks/serving.py)."""

    _OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=_json_default, option=self._OPTIONS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        body = orjson.dumps(self._prepare_response_obj(args, kwargs), default=_json_default,
                            option=self._OPTIONS | orjson.OPT_APPEND_NEWLINE)
        return Response(body, mimetype="application/json")


def _default_predictor(registry: Registry) -> PredictorLike:
    from carecast.scoring.predictor import Predictor

    # challengers loaded too: the embedded worker scores them in shadow; API answers use the champion only
    predictor: PredictorLike = Predictor(registry, list(TASKS), challengers=True)
    return predictor


def _default_queue(settings: Settings, store: Store) -> QueueLike:
    from carecast.scoring.queue import make_queue

    queue: QueueLike = make_queue(settings, engine=store.engine)
    return queue


def _default_bus(settings: Settings, store: Store) -> BusLike:
    from carecast.scoring.events import make_bus

    bus: BusLike = make_bus(settings.events_url, engine=store.engine)
    return bus


def _limiter(settings: Settings) -> Limiter:
    if settings.queue_url and settings.queue_url.startswith(("redis://", "rediss://")):
        return RedisLimiter(settings.queue_url, settings.rate_limit)
    return TokenBucketLimiter(settings.rate_limit)


def create_app(settings: Settings, *, store: Store | None = None, registry: Registry | None = None,
               predictor: PredictorLike | None = None, queue: QueueLike | None = None,
               bus: BusLike | None = None, worker_factory: WorkerFactory | None = None,
               start_worker: bool | None = None) -> Flask:
    """A configured app. Anything not handed in is built from `settings`.

    `start_worker` (default: when a `worker_factory` is given, `settings.queue_url` is unset and the app
    built its own queue) starts `worker_factory(store, predictor, queue, bus)` in the background."""
    app = Flask("carecast.serving")
    app.json = _JSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_INGEST_BYTES,
        PROPAGATE_EXCEPTIONS=False,  # errors always go through the one JSON handler, tracebacks never out
        TRAP_HTTP_EXCEPTIONS=False,
    )
    store = store or Store.open(settings)
    registry = registry or Registry(settings.model_registry)
    predictor = predictor or _default_predictor(registry)
    own_queue = queue is None
    if queue is None:
        queue = _default_queue(settings, store)
    if bus is None:
        bus = _default_bus(settings, store)
    if start_worker is None:
        start_worker = worker_factory is not None and own_queue and not settings.queue_url
    if start_worker and worker_factory is None:
        raise ConfigError("start_worker needs a worker_factory (carecast.jobs.worker.WorkerThread)")
    services = Services(settings=settings, store=store, registry=registry, predictor=predictor, queue=queue, bus=bus,
                        audit=AuditLog.for_store(store.engine), limiter=_limiter(settings))
    init_context(app, services)
    init_headers(app, settings)  # CSP, HSTS, no-store, strict CORS on every response (its last hook)
    init_observability(app)  # timing, metrics and the access log of every request; /metrics
    errors.init_app(app)
    app.register_blueprint(health.bp)
    init_stream(app, services)
    app.register_blueprint(api_v1)
    app.register_blueprint(cds_hooks)
    init_ui(app, services)  # the web UI: session key (required in production), pages under /ui
    check_declared(app)
    if start_worker and worker_factory is not None:
        worker = worker_factory(store, predictor, queue, bus)
        app.extensions[WORKER_EXTENSION] = worker
        worker.start()
        atexit.register(worker.stop, WORKER_STOP_S)
    return app


def begin_shutdown(app: Flask) -> None:
    """Start stopping without waiting (safe in a signal handler): live streams end at once, the embedded
    worker finishes its current job and claims no more."""
    hub = hub_of(app)
    if hub is not None:
        hub.stop()
    worker = app.extensions.get(WORKER_EXTENSION)
    stop_event = getattr(worker, "stop_event", None)
    if stop_event is not None:
        stop_event.set()


def shutdown(app: Flask, timeout: float = WORKER_STOP_S) -> None:
    """End the live streams, stop the embedded worker (waiting up to `timeout` s) and close the bus."""
    begin_shutdown(app)
    hub = hub_of(app)
    if hub is not None:
        hub.close()
    worker: BackgroundWorker | None = app.extensions.pop(WORKER_EXTENSION, None)
    if worker is not None:
        worker.stop(timeout)
    bus = app.extensions[EXTENSION].bus if EXTENSION in app.extensions else None
    close = getattr(bus, "close", None)
    if callable(close):
        close()


def app_from_env(worker_factory: WorkerFactory | None = None) -> Flask:
    """The app with settings read from the environment once: `gunicorn 'carecast.serving.app:app_from_env()'`
    (without an embedded worker: run `carecast worker` beside it, or use `carecast serve`)."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings, worker_factory=worker_factory)
