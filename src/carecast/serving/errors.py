"""Errors of the HTTP layer and the one handler that answers every failure as JSON.

Every error body has the same shape: `{"error": {"code", "message", "request_id", "fields"}}`.
Messages are fixed texts or `public_message`s of CareCast errors, never request data (it is patient
data); `fields` name where and which field failed and why, never the value. An unexpected exception
becomes a 500 with an error id; the server log gets its stack frames but not its message, which could
quote a value.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from carecast.errors import CareCastError, StoreUnavailableError

log = logging.getLogger("carecast.serving")

RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class FieldError:
    """One failing field: where in the input (record or body part), which field, and why (never the value)."""

    where: str
    field: str | None
    reason: str

    def to_dict(self) -> dict[str, str | None]:
        return {"where": self.where, "field": self.field, "reason": self.reason}


class ApiError(CareCastError):
    """An error the API answers on purpose, with a machine-readable code and optional failing fields."""

    http_status = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, public_message: str, *, fields: Iterable[FieldError] = (),
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(public_message)
        self.fields = list(fields)
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    http_status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    http_status = 401
    code = "unauthorized"

    def __init__(self, public_message: str = "a valid bearer token is required") -> None:
        super().__init__(public_message, headers={"WWW-Authenticate": 'Bearer realm="carecast"'})


class Forbidden(ApiError):
    http_status = 403
    code = "forbidden"


class NotFound(ApiError):
    http_status = 404
    code = "not_found"


class PayloadTooLarge(ApiError):
    http_status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    http_status = 415
    code = "unsupported_media_type"


class Unprocessable(ApiError):
    http_status = 422
    code = "unprocessable"


class TooManyRequests(ApiError):
    http_status = 429
    code = "too_many_requests"

    def __init__(self, retry_after: str) -> None:
        super().__init__("too many requests; retry later", headers={"Retry-After": retry_after})


class ServiceUnavailable(ApiError):
    http_status = 503
    code = "service_unavailable"

    def __init__(self, public_message: str = "the service is temporarily unavailable") -> None:
        super().__init__(public_message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


# Codes and fixed messages for the HTTP errors Flask and Werkzeug raise themselves (routing, body size).
_HTTP_CODES = {
    400: ("bad_request", "the request could not be read"),
    401: ("unauthorized", "a valid bearer token is required"),
    403: ("forbidden", "not allowed"),
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "method not allowed on this resource"),
    406: ("not_acceptable", "no acceptable representation"),
    413: ("payload_too_large", "request body too large"),
    415: ("unsupported_media_type", "unsupported content type"),
    422: ("unprocessable", "the request could not be processed"),
    429: ("too_many_requests", "too many requests"),
    503: ("service_unavailable", "the service is temporarily unavailable"),
}
_CARECAST_CODES = {400: "bad_request", 404: "not_found", 409: "conflict", 422: "unprocessable",
                   503: "service_unavailable"}


def error_body(status: int, code: str, message: str, fields: Iterable[FieldError] = (),
               error_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": getattr(g, "request_id", None),
                            "fields": [f.to_dict() for f in fields]}
    if error_id is not None:
        body["error_id"] = error_id
    return {"error": body}


def _respond(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _stack_frames(exc: BaseException) -> str:
    """File, line and function of each frame, and the exception's type; not its message (it may hold a value)."""
    frames = traceback.extract_tb(exc.__traceback__)
    lines = [f'  File "{f.filename}", line {f.lineno}, in {f.name}' for f in frames]
    return "\n".join([*lines, f"{type(exc).__module__}.{type(exc).__qualname__}"])


def _database_unavailable(exc: Exception) -> bool:
    """Connection failures, pool exhaustion and dropped connections (not a bug's integrity error: that is a 500)."""
    if isinstance(exc, StoreUnavailableError | OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "(no route)"


def handle_error(exc: Exception) -> Response:
    """The one error handler of the app (registered for every Exception)."""
    if isinstance(exc, ApiError):
        return _respond(exc.http_status, error_body(exc.http_status, exc.code, exc.public_message, exc.fields),
                        exc.headers)
    if _database_unavailable(exc):
        log.warning("database unavailable (%s) on %s %s request_id=%s", type(exc).__name__, request.method,
                    _route(), getattr(g, "request_id", None),
                    extra={"request_id": getattr(g, "request_id", None), "route": _route(), "method": request.method})
        return handle_error(ServiceUnavailable("the database is unavailable; retry shortly"))
    if isinstance(exc, CareCastError) and exc.http_status < 500:
        code = _CARECAST_CODES.get(exc.http_status, "error")
        return _respond(exc.http_status, error_body(exc.http_status, code, exc.public_message))
    if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 500:
        code, message = _HTTP_CODES.get(exc.code, ("error", "the request failed"))
        headers: dict[str, str] = {}
        if exc.code == 405:
            allowed = exc.get_response().headers.get("Allow")
            if allowed:
                headers["Allow"] = allowed
        if exc.code == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="carecast"'
        return _respond(exc.code, error_body(exc.code, code, message), headers)
    error_id = uuid.uuid4().hex[:16]
    log.error("unexpected error error_id=%s request_id=%s on %s %s\n%s", error_id, getattr(g, "request_id", None),
              request.method, _route(), _stack_frames(exc),
              extra={"error_id": error_id, "request_id": getattr(g, "request_id", None), "route": _route(),
                     "method": request.method, "status": 500})
    return _respond(500, error_body(500, "internal_error", "an unexpected error occurred; quote the error id",
                                    error_id=error_id))


def init_app(app: Flask) -> None:
    app.register_error_handler(Exception, handle_error)
