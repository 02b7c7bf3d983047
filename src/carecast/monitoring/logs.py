"""Structured logs: one JSON object per line, with the request's id, user id, route, status and latency.

Log lines name things (routes, tasks, record positions, exception types, error ids), never patient data:
callers pass identifiers of requests and users only, and `JsonFormatter` keeps a fixed set of context
fields (`CONTEXT_FIELDS`), so an `extra={...}` carrying anything else is dropped rather than written.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

CONTEXT_FIELDS = ("request_id", "user_id", "role", "route", "method", "status", "latency_ms", "error_id", "task",
                  "model_version", "worker", "jobs", "event")
_HANDLER_NAME = "carecast-json"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", <context fields given>, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value if isinstance(value, int | float | str | bool) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "INFO", stream: TextIO | None = None, *, json_lines: bool = True) -> None:
    """Send carecast's (and gunicorn's) logs to `stream` (stderr) as JSON lines. Idempotent: calling it
    again replaces the handler it installed before."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("gunicorn.error", "gunicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
