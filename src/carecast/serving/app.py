"""The app factory: `create_app(settings)` builds the Flask app, its services and its routes.

Tests hand in their own store, predictor, queue and bus; otherwise they are built from the settings.
The API authenticates with bearer tokens only, so no session secret is needed here (the UI adds its own).
An app whose views do not all declare a permission (or `@public`) is refused at creation.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from carecast.config import Settings
from carecast.models.registry import Registry
from carecast.models.tasks import TASKS
from carecast.security.audit import AuditLog
from carecast.serving import errors, health
from carecast.serving.api_v1 import MAX_INGEST_BYTES
from carecast.serving.api_v1 import bp as api_v1
from carecast.serving.auth import check_declared
from carecast.serving.context import BusLike, PredictorLike, QueueLike, Services
from carecast.serving.context import init_app as init_context
from carecast.store import Store


class _JSONProvider(DefaultJSONProvider):
    """ISO 8601 times (Flask's default is RFC 822) and keys in the order the views build them."""

    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        if isinstance(o, datetime | date):
            return o.isoformat()
        return DefaultJSONProvider.default(o)


def _default_predictor(registry: Registry) -> PredictorLike:
    from carecast.scoring.predictor import Predictor

    predictor: PredictorLike = Predictor(registry, list(TASKS))
    return predictor


def _default_queue(settings: Settings, store: Store) -> QueueLike:
    from carecast.scoring.queue import make_queue

    queue: QueueLike = make_queue(settings, engine=store.engine)
    return queue


def _default_bus(settings: Settings) -> BusLike:
    from carecast.scoring.events import make_bus

    bus: BusLike = make_bus(settings.events_url)
    return bus


def create_app(settings: Settings, *, store: Store | None = None, registry: Registry | None = None,
               predictor: PredictorLike | None = None, queue: QueueLike | None = None,
               bus: BusLike | None = None) -> Flask:
    """A configured app. Anything not handed in is built from `settings`."""
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
    if queue is None:
        queue = _default_queue(settings, store)
    if bus is None:
        bus = _default_bus(settings)
    services = Services(settings=settings, store=store, registry=registry, predictor=predictor, queue=queue, bus=bus,
                        audit=AuditLog(store.engine))
    init_context(app, services)
    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(api_v1)
    check_declared(app)
    return app


def app_from_env() -> Flask:
    """The app with settings read from the environment once: `gunicorn 'carecast.serving.app:app_from_env()'`."""
    return create_app(Settings.from_env())
