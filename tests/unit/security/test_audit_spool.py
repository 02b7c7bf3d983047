"""The audit spool of server processes on a SQLite file: a row is written to the process's spool before
`record` returns and lands in the table exactly once, in a background shipment, a flush, or, if the
process was killed, the recovery of another process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from carecast.errors import StoreUnavailableError
from carecast.security import audit as A
from carecast.security.audit import AuditLog, flush_spools, spool_dir_for
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.db import make_engine


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Only a SQLite file is spooled: a server database commits each row before `record` returns."""
    return str(request.param)


@pytest.fixture()
def sqlite_store(store: Store) -> Store:
    return store


@pytest.fixture()
def slow_shipper(monkeypatch: pytest.MonkeyPatch) -> None:
    """No background shipment within a test: rows stay spooled until a flush."""
    monkeypatch.setattr(A, "SHIP_INTERVAL_S", 3600.0)


def table_rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(S.AuditEvent)).scalar_one())


def marks(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {name: int(n) for name, n in conn.execute(select(S.AuditSpool.name, S.AuditSpool.shipped))}


def spools(directory: Path | None) -> list[Path]:
    assert directory is not None
    return sorted(directory.glob("*" + A.SPOOL_SUFFIX))


def test_only_a_sqlite_file_is_spooled(tmp_path: Path) -> None:
    assert spool_dir_for(make_engine(f"sqlite:///{tmp_path}/a.db")) == tmp_path / "a.db-audit-spool"
    assert spool_dir_for(make_engine("sqlite://")) is None
    server = make_engine("postgresql://carecast@127.0.0.1/none")  # never connected
    assert spool_dir_for(server) is None and AuditLog.for_store(server).spool_dir is None


def test_record_spools_the_row_and_a_flush_ships_it_once(sqlite_store: Store, slow_shipper: None) -> None:
    log = AuditLog.for_store(sqlite_store.engine)
    assert log.spool_dir == spool_dir_for(sqlite_store.engine)
    def ten(n: int) -> None:
        for i in range(10):
            log.record(action="patient:read", outcome="success", username=f"t{n}", patient_uid=f"p{i}")

    threads = [threading.Thread(target=ten, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert table_rows(sqlite_store) == 0  # written to the spool only
    (spool,) = spools(log.spool_dir)
    data = spool.read_bytes().rstrip(b"\0")  # the file's unused tail is zeros
    assert len(data.splitlines()) == 50 and data.endswith(b"\n")
    log.flush()
    log.flush()
    assert table_rows(sqlite_store) == 50
    assert marks(sqlite_store) == {spool.name: len(data)}
    check = log.verify()
    assert check.ok and check.rows == 50
    assert sorted(r["username"] for r in log.rows(limit=100)) == sorted(f"t{n}" for n in range(5) for _ in range(10))
    log.close()
    assert spools(log.spool_dir) == [] and marks(sqlite_store) == {}
    assert table_rows(sqlite_store) == 50


def test_the_background_shipper_ships_without_a_flush(sqlite_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(A, "SHIP_INTERVAL_S", 0.01)
    log = AuditLog.for_store(sqlite_store.engine)
    for i in range(20):
        log.record(action="patient:read", outcome="success", username="u", patient_uid=f"p{i}")
    deadline = time.monotonic() + 10
    while table_rows(sqlite_store) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert table_rows(sqlite_store) == 20 and log.verify().ok


KILLED = """
import os, signal, sys
from carecast.security import audit as A
from carecast.store.db import make_engine
A.SHIP_INTERVAL_S = 3600.0
log = A.AuditLog.for_store(make_engine(sys.argv[1]))
for i in range(30):
    log.record(action="patient:read", outcome="success", username="first", patient_uid=f"p{i}")
log.flush()
for i in range(20):
    log.record(action="patient:read", outcome="success", username="second", patient_uid=f"p{i}")
spool = log._own_spool()
spool.map[spool.size:spool.size + 13] = b'{"at": "2026-'  # a line the process never finished
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_spool_of_a_killed_process_is_shipped_exactly_once(sqlite_store: Store, tmp_path: Path) -> None:
    url = sqlite_store.engine.url.render_as_string(hide_password=False)
    done = subprocess.run([sys.executable, "-c", KILLED, url], capture_output=True, timeout=120, check=False)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    directory = spool_dir_for(sqlite_store.engine)
    assert directory is not None and len(spools(directory)) == 1
    assert table_rows(sqlite_store) == 30  # the first 30 were shipped; 20 more wait in the dead process's spool
    log = AuditLog.for_store(sqlite_store.engine)
    log.flush()  # another process of the host (here: this one) finds the spool unlocked and ships the rest
    log.flush()
    assert table_rows(sqlite_store) == 50
    check = log.verify()
    assert check.ok and check.rows == 50
    assert [r["username"] for r in log.rows(limit=50)].count("second") == 20
    assert spools(directory) == [] and marks(sqlite_store) == {}


def test_a_live_spool_is_left_to_its_own_process(sqlite_store: Store, slow_shipper: None) -> None:
    mine = AuditLog.for_store(sqlite_store.engine)
    other = AuditLog.for_store(sqlite_store.engine)  # as another live process
    for _ in range(5):
        other.record(action="patient:read", outcome="success", username="other")
    mine.flush()
    assert table_rows(sqlite_store) == 0  # its spool is locked: not an orphan
    other.flush()
    mine.flush()
    assert table_rows(sqlite_store) == 5 and mine.verify().ok


def test_a_full_spool_is_followed_by_a_new_one_and_removed_once_shipped(
        sqlite_store: Store, slow_shipper: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(A, "SPOOL_FILE_BYTES", 1000)  # three or four rows a file
    log = AuditLog.for_store(sqlite_store.engine)
    assert log.spool_dir is not None
    retired: list[A._SpoolFile] = []
    retire = log._retire

    def counted(spool: A._SpoolFile) -> None:
        retired.append(spool)
        retire(spool)

    monkeypatch.setattr(log, "_retire", counted)
    seen: set[str] = set()
    for i in range(40):
        log.record(action="patient:read", outcome="success", username="u", patient_uid=f"p{i}")
        seen.update(p.name for p in spools(log.spool_dir))
        if i % 7 == 6:
            log.flush()
    assert len(seen) >= 6 and len(spools(log.spool_dir)) >= 2  # full files wait for their rows' shipment
    log.flush()
    assert len(spools(log.spool_dir)) == 1 and set(marks(sqlite_store)) <= {p.name for p in spools(log.spool_dir)}
    check = log.verify()
    assert check.ok and check.rows == 40
    log.close()
    assert spools(log.spool_dir) == [] and marks(sqlite_store) == {}
    assert len(retired) == len(seen)  # each file removed once
    # a removed spool is not kept alive by the log's finalizer (one per file, over a process's life)
    assert all(spool.finalizer is not None and not spool.finalizer.alive for spool in retired)


def test_a_spool_that_cannot_be_written_refuses_the_record(sqlite_store: Store, slow_shipper: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog.for_store(sqlite_store.engine)
    log.record(action="patient:read", outcome="success", username="before")

    def disk_full(self: object, line: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(A._SpoolFile, "write", disk_full)
    with pytest.raises(StoreUnavailableError):  # a 503 for the request: its access could not be recorded
        log.record(action="patient:read", outcome="success", username="during")
    monkeypatch.undo()
    # a new spool file's blocks are allocated up front: a full disk is an error there, never a fault later
    monkeypatch.setattr(A.os, "posix_fallocate", lambda fd, offset, size: disk_full(None, b""))
    fresh = AuditLog.for_store(sqlite_store.engine)
    with pytest.raises(StoreUnavailableError):
        fresh.record(action="patient:read", outcome="success", username="during")
    assert log.spool_dir is not None and log._spool is not None
    assert [p.name for p in spools(log.spool_dir)] == [log._spool.name]  # no half-made file left behind
    assert not list(log.spool_dir.glob("*.new"))
    monkeypatch.undo()
    monkeypatch.setattr(A, "SHIP_INTERVAL_S", 3600.0)
    log.record(action="patient:read", outcome="success", username="after")
    log.flush()
    assert [r["username"] for r in log.rows(limit=10)] == ["after", "before"] and log.verify().ok


def test_rows_wait_in_the_spool_while_the_database_is_down(sqlite_store: Store, slow_shipper: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(A, "SPOOL_MAX_UNSHIPPED", 3)
    log = AuditLog.for_store(sqlite_store.engine)

    def down(rows: object, spool: object = None) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(log, "_append", down)
    for _ in range(3):
        log.record(action="patient:read", outcome="success", username="u")
    with pytest.raises(OperationalError):
        log._ship_all()
    with pytest.raises(StoreUnavailableError):  # the backlog is full: refuse rather than grow without bound
        log.record(action="patient:read", outcome="success", username="u")
    monkeypatch.undo()
    flush_spools(sqlite_store.engine)
    assert table_rows(sqlite_store) == 3 and log.verify().ok


def test_shipped_rows_are_stored_as_sqlalchemy_stores_them(sqlite_store: Store) -> None:
    """The shipper's straight-to-the-driver insert stores each column as SQLAlchemy's own insert does (the
    time as SQLite text with its microseconds, which filters compare as strings)."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    row = {"at": datetime(2026, 5, 1, 8, 30, tzinfo=UTC), "user_id": 4, "username": "dr.b", "role": "clinician",
           "action": "patient:read", "patient_uid": "u-9", "source_ip": "10.0.0.2", "outcome": "success",
           "request_id": "r-9", "detail": None}
    with sqlite_store.engine.begin() as conn:
        A._insert(conn, [{**row, "prev_hash": "p", "hash": "h1", "seq": 1}])
        conn.execute(A._APPEND, [{**row, "prev_hash": "p", "hash": "h2", "seq": 2}])
        stored = conn.execute(text("SELECT * FROM audit_events ORDER BY seq")).all()
    shipped, reference = ([v for k, v in r._mapping.items() if k not in ("id", "hash", "seq")] for r in stored)
    assert shipped == reference and "2026-05-01 08:30:00.000000" in shipped


def test_a_spool_line_round_trips_every_field(sqlite_store: Store) -> None:
    log = AuditLog(sqlite_store.engine)
    log.record(action="patient:read", outcome="denied", username="Zoë", patient_uid="u-1", source_ip="10.0.0.1",
               request_id="r-1", detail="break-glass 30 min")
    (row,) = log.rows(limit=1)
    fields = {k: row[k] for k in A._FIELDS}
    assert A._spooled_row(A._spool_line(fields)) == fields
    timeless = json.dumps({**{k: str(v) for k, v in fields.items()}, "at": 5}).encode()  # every field, no time
    for bad in (b"{}", b"[1]", b'{"at": "2026-01-01T00:00:00"}', timeless):
        with pytest.raises(ValueError):
            A._spooled_row(bad)


def test_the_shipper_retries_quietly_while_the_database_is_down(sqlite_store: Store, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(A, "SHIP_INTERVAL_S", 0.01)
    log = AuditLog.for_store(sqlite_store.engine)
    tries: list[int] = []

    def down(rows: list[object], spool: object = None) -> None:
        tries.append(len(rows))
        raise OperationalError("INSERT", {}, Exception("unable to open database file"))

    monkeypatch.setattr(log, "_append", down)
    with caplog.at_level(logging.WARNING, logger="carecast.security.audit"):
        log.record(action="patient:read", outcome="success", username="u")
        deadline = time.monotonic() + 10
        while len(tries) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(tries) >= 10  # tried again and again
    warnings = [r for r in caplog.records if r.name == "carecast.security.audit"]
    assert len(warnings) == 1 and "1 waiting" in warnings[0].getMessage()  # said once, not once a round
    monkeypatch.undo()
    monkeypatch.setattr(A, "SHIP_INTERVAL_S", 0.01)
    deadline = time.monotonic() + 10
    while table_rows(sqlite_store) < 1 and time.monotonic() < deadline:  # the database is back: shipped
        time.sleep(0.01)
    assert table_rows(sqlite_store) == 1 and log.verify().ok
