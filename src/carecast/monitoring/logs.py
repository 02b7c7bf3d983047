"""Structured logs: one JSON object per line, with the request's id, user id, route, status and latency.

Log lines name things (routes, tasks, record positions, exception types, error ids), never patient data:
callers pass identifiers of requests and users only, and `JsonFormatter` keeps a fixed set of context
fields (`CONTEXT_FIELDS`), so an `extra={...}` carrying anything else is dropped rather than written.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

CONTEXT_FIELDS = ("request_id", "user_id", "role", "route", "method", "status", "latency_ms", "error_id", "task",
                  "model_version", "worker", "jobs", "event")
_HANDLER_NAME = "carecast-json"
_PLAIN = (int, float, str, bool)


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", <context fields given>, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return json_line(record.created, record.levelname, record.name, record.getMessage(), record.__dict__, exc)


def json_line(created: float, level_name: str, logger: str, msg: str, fields: dict[str, Any],
              exc: str | None = None) -> str:
    """One log line as `JsonFormatter` writes it, from its parts: the time (seconds since the epoch), level,
    logger name, message, the record's attributes (only CONTEXT_FIELDS are taken) and a formatted traceback."""
    entry: dict[str, Any] = {
        "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level_name.lower(), "logger": logger, "msg": msg,
    }
    for name in CONTEXT_FIELDS:
        value = fields.get(name)
        if value is not None:
            entry[name] = value if isinstance(value, _PLAIN) else str(value)
    if exc:
        entry["exc"] = exc
    return orjson.dumps(entry).decode()


class BufferedStreamHandler(logging.StreamHandler):
    """A stream handler that writes lines in batches: a WARNING or worse at once (with every line before it,
    in order), lesser lines at most `interval_s` later, from a background thread, or when `max_bytes` have
    gathered; and everything at exit (`logging.shutdown` flushes each handler).

    Why: a server writes an access-log line per request. Written one by one, each line is a system call
    that lets go of the interpreter lock in the middle of the request, and the request threads of a worker
    queue on the handler's lock: with 4 threads, 80-95 µs CPU per logged request against 9 µs for the
    same line formatted alone. What a crash can lose is the INFO lines of the last `interval_s`; warnings
    and errors are never held back (the audit trail, which is the record of access, is not a log)."""

    def __init__(self, stream: TextIO, *, interval_s: float = 0.2, max_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.interval_s = interval_s
        self.max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        # Locks, always taken in this order: the handler's own (only `logging.shutdown` holds it while it
        # flushes), then the write lock (one batch written at a time, in the order taken), then the buffer's
        # (held for a list operation only, never while taking another).
        self._write_lock = threading.Lock()
        self._buffer_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._flusher_pid = 0
        self._closed = False

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter, format and buffer the record, without the handler's lock (`Handler.handle` holds it around
        the whole of `emit`): request threads then queue only for a list append."""
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.append_line(line, record.levelno)

    def append_line(self, line: str, levelno: int) -> None:
        """Buffer one formatted line (written at once if `levelno` is WARNING or worse)."""
        line += self.terminator
        with self._buffer_lock:
            self._lines.append(line)
            self._size += len(line)
            full = self._size >= self.max_bytes
            start = self._flusher is None or self._flusher_pid != os.getpid()
            if start:
                self._flusher_pid = os.getpid()
                self._flusher = threading.Thread(target=self._flush_every_interval, name="carecast-log-flusher",
                                                 daemon=True)
                self._flusher.start()
        if levelno >= logging.WARNING or full:
            self.flush()

    def _take(self) -> str:
        with self._buffer_lock:
            lines, self._lines, self._size = self._lines, [], 0
        return "".join(lines)

    def flush(self) -> None:
        with self._write_lock:
            text = self._take()
            if text and self.stream is not None:
                try:
                    self.stream.write(text)
                    self.stream.flush()
                except (OSError, ValueError):  # the stream is gone (closed at exit): nothing else to do
                    pass

    def close(self) -> None:
        self._closed = True
        self.flush()
        super().close()

    def _flush_every_interval(self) -> None:
        while not self._closed:
            time.sleep(self.interval_s)
            self.flush()


class DirectLog:
    """A logger for one line per request: the line goes straight into the JSON handler's buffer when that
    handler alone would write the logger's records (no other handler or filter on the way, as
    `configure_logging` sets up a server), as the very line the logging module would have written;
    otherwise (a test's capturing handler, a filter, another format) through the logger, as a record.

    Why: handing a record through the logging module (the record made, the logger hierarchy walked, the
    handler and its formatter called) is about fifteen Python calls, 10.5 µs in a loop against 5 µs for
    this path. In `carecast serve` (2 workers, 8 connections, two servers loaded in alternating rounds) the
    access line cost 66 µs of the 728 µs of CPU a predict request took (the line against no line); written
    directly, a predict request took 15-26 µs less CPU than through the logging module and predict ran
    3.6-4.6% faster (two runs of 12 and 16 rounds). The line is unchanged: `json_line` makes both."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def log(self, level: int, msg: str, *args: Any, extra: dict[str, Any]) -> None:
        if not self.logger.isEnabledFor(level):
            return
        handler = self.sole_handler()
        if handler is None or level < handler.level:
            self.logger.log(level, msg, *args, extra=extra)
            return
        handler.append_line(json_line(time.time(), logging.getLevelName(level), self.logger.name,
                                      msg % args if args else msg, extra), level)

    def sole_handler(self) -> BufferedStreamHandler | None:
        """The one handler this logger's records reach, if it is a plain JSON `BufferedStreamHandler` and no
        filter (of the handler or of a logger on the way) could change or drop them; else None."""
        found: BufferedStreamHandler | None = None
        lg: logging.Logger | None = self.logger
        while lg is not None:
            if lg.filters:
                return None
            for handler in lg.handlers:
                if (found is not None or type(handler) is not BufferedStreamHandler or handler.filters
                        or type(handler.formatter) is not JsonFormatter):
                    return None
                found = handler
            if not lg.propagate:
                break
            lg = lg.parent
        return found


def configure_logging(level: str = "INFO", stream: TextIO | None = None, *, json_lines: bool = True) -> None:
    """Send carecast's (and gunicorn's) logs to `stream` (stderr) as JSON lines, in batches (see
    `BufferedStreamHandler`). Idempotent: calling it again replaces the handler it installed before."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
            handler.close()
    handler = BufferedStreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("gunicorn.error", "gunicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True


def lean_records() -> None:
    """Stop the logging module from gathering, for every record, where the call was made from and its thread
    and process names, which no format of ours writes: the logging HOWTO's own advice ("Optimization"), and
    a third of the cost of an access-log line. The process id stays: gunicorn's own error-log format writes
    it. For server processes (`carecast serve`), where every request logs a line; process-wide, so not done
    by `configure_logging` (a test runner's own log format shows them)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
