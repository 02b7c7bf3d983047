"""The log handler of servers: JSON lines written in batches, warnings at once, nothing lost at exit."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest

from carecast.monitoring.logs import BufferedStreamHandler, DirectLog, JsonFormatter, configure_logging, lean_records


@pytest.fixture()
def logger() -> Iterator[logging.Logger]:
    lg = logging.getLogger("carecast.test-buffered")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    yield lg
    for handler in list(lg.handlers):
        lg.removeHandler(handler)
        handler.close()
    lg.filters.clear()


def attach(lg: logging.Logger, **options: float) -> tuple[BufferedStreamHandler, io.StringIO]:
    out = io.StringIO()
    handler = BufferedStreamHandler(out, **options)
    handler.setFormatter(JsonFormatter())
    lg.addHandler(handler)
    return handler, out


def messages(out: io.StringIO) -> list[str]:
    return [orjson.loads(line)["msg"] for line in out.getvalue().splitlines()]


def test_info_lines_wait_and_a_warning_writes_them_all_in_order(logger: logging.Logger) -> None:
    _, out = attach(logger, interval_s=3600.0)
    logger.info("one")
    logger.info("two")
    assert out.getvalue() == ""  # held back: one write for many lines
    logger.warning("three")
    assert messages(out) == ["one", "two", "three"]


def test_the_flusher_writes_held_lines_within_its_interval(logger: logging.Logger) -> None:
    _, out = attach(logger, interval_s=0.05)
    logger.info("soon")
    deadline = time.monotonic() + 5
    while not out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert messages(out) == ["soon"]


def test_a_full_buffer_is_written_at_once(logger: logging.Logger) -> None:
    _, out = attach(logger, interval_s=3600.0, max_bytes=1000)
    for i in range(25):
        logger.info("line %d", i)
    written = messages(out)
    assert 5 <= len(written) < 25 and written == [f"line {i}" for i in range(len(written))]


def test_concurrent_threads_lose_and_repeat_no_line(logger: logging.Logger) -> None:
    handler, out = attach(logger, interval_s=0.001, max_bytes=2000)

    def burst(n: int) -> None:
        for i in range(300):
            logger.info("t%d-%d", n, i)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handler.flush()
    written = messages(out)
    assert sorted(written) == sorted(f"t{n}-{i}" for n in range(4) for i in range(300))
    for n in range(4):  # each thread's lines in its own order
        mine = [m for m in written if m.startswith(f"t{n}-")]
        assert mine == [f"t{n}-{i}" for i in range(300)]


def alone(logger: logging.Logger) -> None:
    """The logger without the log-capture handlers (pytest's LogCaptureHandler) found on it in a test run (their
    removal at teardown then finds them gone, harmlessly), so that the one attached next is its only one."""
    logger.handlers = []


CONTEXT = {"request_id": "r-1", "user_id": 3, "role": "clinician", "route": "/api/v1/predict", "method": "POST",
           "status": 200, "latency_ms": 1.25, "error_id": None}


def test_a_direct_line_is_the_line_the_logging_module_writes(logger: logging.Logger,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    alone(logger)
    handler, out = attach(logger, interval_s=3600.0)
    direct = DirectLog(logger)
    assert direct.sole_handler() is handler
    logger.info("%s %s %d", "POST", "/api/v1/predict", 200, extra=CONTEXT)  # through the logging module
    handed: list[logging.LogRecord] = []
    monkeypatch.setattr(logger, "handle", handed.append)
    direct.log(logging.INFO, "%s %s %d", "POST", "/api/v1/predict", 200, extra=CONTEXT)
    assert handed == []  # no record was made: the line went straight to the handler
    assert out.getvalue() == ""  # an INFO line waits for the flusher, as any other
    handler.flush()
    through, straight = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", straight["ts"])
    assert abs(datetime.fromisoformat(straight["ts"]).timestamp() - time.time()) < 60
    through.pop("ts")
    straight.pop("ts")
    assert list(straight.items()) == list(through.items())  # the same keys, in the same order
    assert straight["msg"] == "POST /api/v1/predict 200" and "error_id" not in straight


def test_a_direct_line_goes_through_the_logger_when_anything_else_could_see_it(logger: logging.Logger) -> None:
    alone(logger)
    handler, out = attach(logger, interval_s=3600.0)
    direct = DirectLog(logger)
    seen: list[logging.LogRecord] = []
    handler.addFilter(lambda record: seen.append(record) or True)  # a filter on the handler
    assert direct.sole_handler() is None
    direct.log(logging.INFO, "one", extra=CONTEXT)
    assert [r.getMessage() for r in seen] == ["one"]
    handler.filters.clear()

    captured: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = captured.append  # type: ignore[method-assign]
    logger.addHandler(other)  # a second handler (a test's capture, an operator's own)
    assert direct.sole_handler() is None
    direct.log(logging.INFO, "two", extra=CONTEXT)
    assert [r.getMessage() for r in captured] == ["two"] and captured[0].__dict__["route"] == "/api/v1/predict"
    logger.removeHandler(other)

    logger.addFilter(lambda record: record.getMessage() != "three")  # a filter on the logger drops this one
    direct.log(logging.INFO, "three", extra=CONTEXT)
    handler.flush()
    assert messages(out) == ["one", "two"]


def test_a_direct_line_respects_levels_and_writes_warnings_at_once(logger: logging.Logger) -> None:
    alone(logger)
    handler, out = attach(logger, interval_s=3600.0)
    direct = DirectLog(logger)
    direct.log(logging.DEBUG, "below the logger's level", extra=CONTEXT)
    handler.setLevel(logging.WARNING)
    direct.log(logging.INFO, "below the handler's level", extra=CONTEXT)
    assert out.getvalue() == ""
    direct.log(logging.WARNING, "slow", extra=CONTEXT)
    assert messages(out) == ["slow"]  # written at once, like any warning


EXITING = """
import logging
from carecast.monitoring.logs import configure_logging
configure_logging("INFO")
configure_logging("INFO")  # again: the first handler is replaced, not doubled
logging.getLogger("carecast.test").info("last words")
"""


def test_held_lines_are_written_when_the_process_exits() -> None:
    done = subprocess.run([sys.executable, "-c", EXITING], capture_output=True, timeout=60, check=True)
    lines = [orjson.loads(line) for line in done.stderr.decode().splitlines() if line.startswith("{")]
    assert [line["msg"] for line in lines] == ["last words"]


def test_configure_logging_replaces_its_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging("INFO", io.StringIO())
        configure_logging("INFO", io.StringIO())
        ours = [h for h in root.handlers if isinstance(h, BufferedStreamHandler)]
        assert len(ours) == 1
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def test_lean_records_skip_the_caller_lookup_and_write_the_same_line(logger: logging.Logger,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored after the test
    context = {"request_id": "r-1", "user_id": 3, "role": "clinician", "route": "/api/v1/predict", "status": 200}

    def line() -> tuple[dict[str, object], logging.LogRecord]:
        seen: list[logging.LogRecord] = []
        handler, out = attach(logger)
        handler.addFilter(lambda record: seen.append(record) or True)
        logger.info("%s %s %d", "POST", "/api/v1/predict", 200, extra=context)
        logger.removeHandler(handler)
        handler.close()  # writes what it holds and ends its flusher thread
        entry = orjson.loads(out.getvalue())
        entry.pop("ts")
        return entry, seen[0]

    full, record = line()
    assert record.funcName == "line" and record.threadName is not None
    lean_records()
    lean, record = line()
    assert record.funcName == "(unknown function)" and record.threadName is None and record.processName is None
    # gunicorn's own error-log lines (its handler, its format) still carry the process id
    from gunicorn.glogging import Logger as GunicornLogger

    assert f"[{os.getpid()}] [INFO] POST" in logging.Formatter(GunicornLogger.error_fmt).format(record)
    assert lean == full == {"level": "info", "logger": "carecast.test-buffered", "msg": "POST /api/v1/predict 200",
                            **context}
