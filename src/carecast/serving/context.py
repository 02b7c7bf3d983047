"""What a request can reach: the app's services (store, predictor, queue, bus, audit) and the per-request
context (request id, source address, the authenticated principal)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from flask import Flask, Response, current_app, g, request

from carecast.config import Settings
from carecast.security.audit import AuditLog
from carecast.security.permissions import Principal
from carecast.serving.ratelimit import Limiter
from carecast.store import Store

EXTENSION = "carecast"
REQUEST_ID_HEADER = "X-Request-ID"
# An incoming request id is kept only if it is a short token that cannot smuggle anything into a log.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


class ScoredRiskLike(Protocol):
    @property
    def task(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    @property
    def risk(self) -> float: ...

    @property
    def band(self) -> str: ...

    @property
    def factors(self) -> Any: ...


class PredictorLike(Protocol):
    """What serving needs of carecast.scoring.predictor.Predictor (tests pass a small fake)."""

    @property
    def ready(self) -> bool: ...

    def versions(self) -> Mapping[str, Any]: ...

    def maybe_refresh(self) -> Any: ...

    def feature_set(self, task: str) -> frozenset[str]: ...

    def predict(self, task: str, features_row: Mapping[str, Any], *, fill_missing: bool = ...) -> ScoredRiskLike: ...


class QueueLike(Protocol):
    def enqueue(self, patient_ids: Iterable[int], data_time: datetime | None) -> Any: ...

    def depth(self) -> int: ...


class BusLike(Protocol):
    def publish(self, event: dict[str, Any]) -> Any: ...


@dataclass
class Services:
    """Everything the views use, built once per app (see create_app)."""

    settings: Settings
    store: Store
    registry: Any | None
    predictor: PredictorLike
    queue: QueueLike | None
    bus: BusLike | None
    audit: AuditLog
    limiter: Limiter | None = None


def services() -> Services:
    found: Services = current_app.extensions[EXTENSION]
    return found


def request_id() -> str | None:
    return getattr(g, "request_id", None)


def source_ip() -> str | None:
    return getattr(g, "source_ip", None)


def principal() -> Principal:
    """The authenticated principal; only valid inside a view guarded by `requires`."""
    found: Principal | None = getattr(g, "principal", None)
    if found is None:
        raise RuntimeError("no authenticated principal: the view is not guarded by requires()")
    return found


def _begin_request() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    g.source_ip = request.remote_addr
    g.principal = None


def _end_request(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = getattr(g, "request_id", "") or ""
    return response  # the security headers (no-store, nosniff, CSP...) are serving.headers' job


def init_app(app: Flask, svc: Services) -> None:
    app.extensions[EXTENSION] = svc
    app.before_request(_begin_request)
    app.after_request(_end_request)
