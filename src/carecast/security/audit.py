"""The audit trail: append-only and hash-chained.

Each row's hash is SHA-256 over the previous row's hash and this row's fields, so editing, deleting
or reordering any row breaks `verify()` from that row on. Each row's place in the chain (`seq`, the
head's + 1) is UNIQUE in the table: two writers that read the same head cannot both commit, so the chain
stays linear across processes and hosts on any backend (the loser retries on the new head). Rows hold
tags and ids, never patient values.

A server process on a SQLite file spools its rows (`AuditLog(..., spool_dir=spool_dir_for(engine))`):
`record` writes the row as one line to the process's own spool file and returns; a background thread
moves the spooled rows into the table every `SHIP_INTERVAL_S`, chaining them in one transaction that
also records how far the file has been shipped (table `audit_spool`), so each row lands exactly once.
A spooled row is as durable as a committed SQLite row: SQLite in WAL mode with synchronous=NORMAL does
not fsync at commit either, so both survive the process being killed (the kernel holds the bytes) and
both may be lost with the host's power. If the process dies, its spool is shipped by the next process
of the host that records or flushes (a spool's process holds an flock on it while it lives). Why: a
request that commits its own row serialises every process of the host on the file's write lock; under
8 connections the audit commit halved `POST /api/v1/predict`'s throughput (benchmarks/serving.py).
On a server database (PostgreSQL) rows are committed before `record` returns: its commit is durable
beyond this host, which a local spool file would not be.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import mmap
import os
import random
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from carecast.errors import StoreUnavailableError
from carecast.security.permissions import Principal
from carecast.store import schema as S
from carecast.store.db import transaction_lock

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_LOCK_KEY = 0x43434155  # "CCAU": the advisory lock of the audit trail on PostgreSQL
_FIELDS = ("at", "user_id", "username", "role", "action", "patient_uid", "source_ip", "outcome", "request_id",
           "detail")
_FIELD_SET = frozenset(_FIELDS)
OUTCOMES = ("success", "denied", "failed", "error")
# Built once: each request appends one row, so the statements are compiled once and then reused.
_TABLE = S.table(S.AuditEvent)
_COLUMNS = (*_FIELDS, "prev_hash", "hash", "seq")
_HEAD = select(_TABLE.c.hash, _TABLE.c.seq).order_by(_TABLE.c.id.desc()).limit(1)
_APPEND = insert(_TABLE)
_SPOOL = S.table(S.AuditSpool)
_SPOOL_MOVE = update(_SPOOL).where(_SPOOL.c.name == bindparam("spool")).values(shipped=bindparam("upto"))
_SPOOL_START = insert(_SPOOL).values(name=bindparam("spool"), shipped=bindparam("upto"))
_SPOOL_SHIPPED = select(_SPOOL.c.shipped).where(_SPOOL.c.name == bindparam("spool"))
_SPOOL_FORGET = delete(_SPOOL).where(_SPOOL.c.name == bindparam("spool"))

SPOOL_SUFFIX = ".spool"
SHIP_INTERVAL_S = 0.05  # how long a spooled row waits, at most, before its shipment starts
SHIP_MAX_ROWS = 2000  # rows per shipment transaction
SPOOL_FILE_BYTES = 4 * 1024 * 1024  # one spool file (about 16,000 rows); a full one is shipped, then removed
SPOOL_MAX_UNSHIPPED = 100_000  # beyond this (the database down for long), `record` refuses: 503
_SHIPPER_IDLE_S = 2.0  # a shipper thread with nothing to ship for this long ends (the next record starts one)
_RECOVER_EVERY_S = 10.0  # how often an active process looks for spools left by dead processes


def _canonical(body: dict[str, Any]) -> bytes:
    """`json.dumps(body, sort_keys=True, separators=(",", ":"))` as bytes: the form every row's hash is over.
    orjson writes the same bytes for keys and values that are ASCII below DEL (the two differ only in
    escaping DEL and non-ASCII text, which the standard library writes as \\u escapes), in a fifth of the time;
    anything else takes the standard library's own path."""
    text = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    if text.isascii() and b"\x7f" not in text:
        return text
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=_isoformat).encode()


def _isoformat(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not part of an audit row")


def _digest(prev_hash: str, row: dict[str, Any]) -> str:
    # the time as its isoformat() text; a row of exactly the fields with a UTC (or naive) datetime goes to orjson
    # as it is, which writes that very text (the copy was a third of the cost of hashing a shipped row)
    at = row.get("at")
    if type(at) is datetime and (at.tzinfo is UTC or at.tzinfo is None) and row.keys() == _FIELD_SET:
        return hashlib.sha256(prev_hash.encode() + _canonical(row)).hexdigest()
    body = {k: (row[k].isoformat() if isinstance(row[k], datetime) else row[k]) for k in _FIELDS}
    return hashlib.sha256(prev_hash.encode() + _canonical(body)).hexdigest()


@dataclass(frozen=True)
class AuditCheck:
    ok: bool
    rows: int
    first_bad_id: int | None


class _Pending:
    """A row waiting for a group commit, and what became of it."""

    __slots__ = ("done", "error", "row")

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.done = False
        self.error: BaseException | None = None


class _HostLock:
    """An exclusive lock of every process on this host that appends to the same SQLite file.

    Without it, two processes read the same head, one commit wins and the other fails on `seq` and
    retries, and each waits for SQLite's write lock in its busy handler, which sleeps 1-100 ms between
    tries: measured with two processes appending 1,000 batches each, 50-100 retries and a p99 of 8-24 ms
    per append. `flock` wakes the next writer as soon as the holder lets go: no retry, no sleep. A thread
    lock orders the threads of one process (flock does not: they share the descriptor), and a process
    forked after the first use opens its own descriptor (a shared one would share the lock)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        import fcntl  # POSIX only; SQLite files are not shared across hosts, so one host's processes suffice

        with self._threads:
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


def _sqlite_file(engine: Engine) -> str | None:
    """The path of the engine's SQLite file on a POSIX host; None for a server database or an in-memory one."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:") or os.name != "posix":
        return None
    return database


def _host_lock(engine: Engine) -> _HostLock | None:
    """The append lock of a SQLite file (beside it); None otherwise (PostgreSQL serialises appenders with an
    advisory lock)."""
    database = _sqlite_file(engine)
    return None if database is None else _HostLock(database + "-audit.lock")


def spool_dir_for(engine: Engine) -> Path | None:
    """Where a server process spools its audit rows: a directory beside a SQLite file. None otherwise (a
    server database's rows are committed before `record` returns)."""
    database = _sqlite_file(engine)
    return None if database is None else Path(database + "-audit-spool")


def _spool_line(row: dict[str, Any]) -> bytes:
    # orjson writes an aware datetime as its isoformat(), which _spooled_row reads back
    return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)


def _spooled_row(line: bytes) -> dict[str, Any]:
    """A row back from its spool line; ValueError if the line is not one `_spool_line` wrote."""
    data = orjson.loads(line)
    if not isinstance(data, dict) or data.keys() != _FIELD_SET or not isinstance(data["at"], str):
        raise ValueError("not an audit row")
    at = datetime.fromisoformat(data["at"])
    if at.tzinfo is None:
        raise ValueError("audit row time without a time zone")
    return {**data, "at": at.astimezone(UTC)}


class _SpoolFile:
    """One process's spool: a file of `SPOOL_FILE_BYTES` mapped into memory, flock-ed for as long as the
    process holds it open, so that another process can tell it from the spool of a process that died.

    A row is appended by copying its line into the mapping: no system call, so a request thread keeps the
    interpreter lock (with a `write` per row, 4 request threads cost 95 µs CPU per audited request against
    60 µs for one). The bytes are in the kernel's page cache as soon as they are copied, as a written file's
    are: they outlive the process. The blocks are allocated when the file is created, so a full disk fails
    there, as an error, never as a fault on a later copy. The unused tail is zeros (a line never holds a
    zero byte: JSON escapes it). The file is created under a temporary name and renamed once locked: a scan
    never sees it unlocked while its process lives."""

    def __init__(self, directory: Path) -> None:
        import fcntl

        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.name = f"{socket.gethostname()[:40]}-{self.pid}-{secrets.token_hex(6)}{SPOOL_SUFFIX}"
        self.path = directory / self.name
        self.capacity = SPOOL_FILE_BYTES
        temporary = directory / (self.name + ".new")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.posix_fallocate(fd, 0, self.capacity)
            self.map = mmap.mmap(fd, self.capacity)
            os.rename(temporary, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self.fd = fd
        self.size = 0
        self.finalizer: weakref.finalize[Any, Any] | None = None  # set by the log that owns the spool

    def write(self, line: bytes) -> int | None:
        """Append one line; the spool's length after it, or None if the file has no room left for it."""
        end = self.size + len(line)
        if end > self.capacity:
            return None
        self.map[self.size:end] = line
        self.size = end
        return end

    def close(self) -> None:
        """Unmap and close the file (and so let go of its lock); once only, as descriptor numbers are reused."""
        fd, self.fd = self.fd, -1
        if self.finalizer is not None:
            self.finalizer.detach()  # closed now: the owning log's finalizer need not keep this spool
        if fd >= 0 and self.pid == os.getpid():
            with contextlib.suppress(OSError, ValueError, BufferError):
                self.map.close()
            with contextlib.suppress(OSError):
                os.close(fd)


def _spooled_data(fd: int, start: int) -> bytes:
    """The spooled lines of a spool file from byte `start` on, up to its unused (zero) tail."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, size - start, start) if size > start else b""
    end = data.find(b"\x00")
    return data if end < 0 else data[:end]


# per SQLite dialect (one per engine): the compiled insert and the columns whose values need converting
_sqlite_inserts: weakref.WeakKeyDictionary[Any, tuple[str, list[tuple[int, Any]]]] = weakref.WeakKeyDictionary()


def _insert(conn: Any, rows: list[dict[str, Any]]) -> None:
    """Insert chained rows. On SQLite, the statement compiled once and the column types' own bind processors
    applied here, with the rows handed to the driver's `executemany` as tuples: the shipper moves batches of
    hundreds, whose per-row parameter handling in SQLAlchemy cost more than SQLite's insert itself (25 against
    17 µs CPU per row, 50-row batches). Other databases take the statement through SQLAlchemy as usual."""
    dialect = conn.dialect
    if dialect.name != "sqlite":
        conn.execute(_APPEND, rows)
        return
    found = _sqlite_inserts.get(dialect)
    if found is None:
        compiled = _APPEND.compile(dialect=dialect, column_keys=list(_COLUMNS))
        if compiled.positiontup != list(_COLUMNS):  # pragma: no cover (SQLite's qmark style is positional)
            raise RuntimeError("unexpected parameter order in the compiled audit insert")
        # each column's type as this dialect stores it (a DateTime's SQLite text form, not the generic type's)
        processors = [_TABLE.c[k].type.dialect_impl(dialect).bind_processor(dialect) for k in _COLUMNS]
        found = _sqlite_inserts[dialect] = (str(compiled), [(i, p) for i, p in enumerate(processors) if p is not None])
    sql, converting = found
    params: list[tuple[Any, ...]] = []
    for row in rows:
        values = list(map(row.__getitem__, _COLUMNS))
        for i, process in converting:
            values[i] = process(values[i])
        params.append(tuple(values))
    conn.exec_driver_sql(sql, params)


_SPOOLING: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def flush_spools(engine: Engine | None = None) -> None:
    """Ship what every spooling audit log of this process (on `engine`, if given) holds, for a reader that
    needs every row of this process in the table now."""
    for audit in list(_SPOOLING):
        if engine is None or audit.engine is engine:
            audit.flush()


@atexit.register
def _ship_at_exit() -> None:
    for audit in list(_SPOOLING):
        try:
            audit.close()
        except Exception:  # the database may be gone: the spool stays and the next process ships it
            log.warning("audit spool left for the next process of this host to ship")


class AuditLog:
    """The audit trail of one process.

    With `spool_dir` (a server process on a SQLite file, see the module's docstring), `record` writes the
    row to this process's spool file and a background thread ships spooled rows into the table.

    Otherwise, with `group_commit` (what the API uses on a server database), the rows of concurrent
    requests are appended together: each `record` still returns only once its own row is committed (or
    raises what stopped it), but requests that arrive while a commit is running share the next one, so
    one head read and one transaction serve several rows. The commit is made by a request's own thread
    (the leader: whoever takes the commit lock and finds its row still waiting commits every waiting row),
    so a request alone pays no hand-over to another thread. Without either, each `record` is its own
    transaction.
    """

    def __init__(self, engine: Engine, *, group_commit: bool = False, spool_dir: Path | None = None) -> None:
        self.engine = engine
        self.group_commit = group_commit
        self.spool_dir = spool_dir
        self._host_lock = _host_lock(engine)
        self._waiting: list[_Pending] = []
        self._queue_lock = threading.Lock()  # guards _waiting, held for a list operation only
        self._commit_lock = threading.Lock()  # one commit of this process at a time
        # spooling: rows written to a spool and not yet shipped, each with its spool and the spool's size after it
        self._spool: _SpoolFile | None = None
        self._full: list[_SpoolFile] = []  # earlier spools of this process, removed once their rows are shipped
        self._unshipped: list[tuple[dict[str, Any], _SpoolFile, int]] = []
        self._spool_lock = threading.Lock()  # guards _spool, _unshipped and _shipper; held briefly
        self._ship_lock = threading.Lock()  # one shipment of this log at a time
        self._shipper: threading.Thread | None = None
        self._closed = False
        self._recovered_at = float("-inf")
        if spool_dir is not None:
            _SPOOLING.add(self)

    @classmethod
    def for_store(cls, engine: Engine) -> AuditLog:
        """The log a server process (and the command line) uses: spooled on a SQLite file, else group commit."""
        return cls(engine, group_commit=True, spool_dir=spool_dir_for(engine))

    def record(self, *, action: str, outcome: str, principal: Principal | None = None, patient_uid: str | None = None,
               source_ip: str | None = None, request_id: str | None = None, detail: str | None = None,
               username: str | None = None) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"audit outcome must be one of {', '.join(OUTCOMES)}")
        row: dict[str, Any] = {
            "at": datetime.now(UTC), "action": action[:64],
            "outcome": outcome, "user_id": principal.user_id if principal else None,
            "username": (principal.username if principal else (username or None) and username[:64]),
            "role": principal.role if principal else None, "patient_uid": patient_uid,
            "source_ip": (source_ip or "")[:64] or None, "request_id": (request_id or "")[:64] or None,
            "detail": (detail or "")[:255] or None,
        }
        if self.spool_dir is not None:
            self._spool_row(row)
        elif self.group_commit:
            self._record_grouped(row)
        else:
            self._append([row])

    def _record_grouped(self, row: dict[str, Any]) -> None:
        pending = _Pending(row)
        with self._queue_lock:
            self._waiting.append(pending)
        with self._commit_lock:
            if not pending.done:  # nobody took it yet: lead, committing every row waiting now
                with self._queue_lock:
                    batch, self._waiting = self._waiting, []
                error: BaseException | None = None
                try:
                    self._append([p.row for p in batch])
                except BaseException as exc:  # handed to each waiting request (a database outage is a 503 there)
                    error = exc
                for p in batch:
                    p.error = error
                    p.done = True
        if pending.error is not None:
            raise pending.error

    # -- spooling -------------------------------------------------------------------------------------------

    def _spool_row(self, row: dict[str, Any]) -> None:
        line = _spool_line(row)
        with self._spool_lock:
            if len(self._unshipped) >= SPOOL_MAX_UNSHIPPED:
                raise StoreUnavailableError("the audit trail is not being stored; retry shortly")
            try:
                spool = self._own_spool()
                size = spool.write(line)
                if size is None:  # full: the next rows go to a new spool; this one is removed once shipped
                    self._full.append(spool)
                    self._spool = None
                    spool = self._own_spool()
                    size = spool.write(line)
                    if size is None:
                        raise OSError("an audit row larger than a spool file")
            except OSError:
                log.error("audit spool cannot be written in %s", self.spool_dir)
                raise StoreUnavailableError("the audit trail cannot be written; retry shortly") from None
            self._unshipped.append((row, spool, size))
            if self._shipper is None:
                self._shipper = threading.Thread(target=self._ship_loop, name="carecast-audit-shipper", daemon=True)
                self._shipper.start()

    def _own_spool(self) -> _SpoolFile:
        """This process's spool (under _spool_lock), opened on first use and anew in a forked child, whose
        parent ships what it spooled itself."""
        if self._spool is None or self._spool.pid != os.getpid():
            if self._spool is not None:  # inherited across fork: the parent's files, rows and thread
                self._unshipped = []
                self._full = []
                self._shipper = None
            assert self.spool_dir is not None
            self._spool = _SpoolFile(self.spool_dir)
            # a log dropped without close() lets go of its spool's lock, so that another process removes it
            self._spool.finalizer = weakref.finalize(self, self._spool.close)
        return self._spool

    def _ship_loop(self) -> None:
        idle_since = time.monotonic()
        warned_at = float("-inf")
        while True:
            time.sleep(SHIP_INTERVAL_S)
            try:
                shipped = self._ship_all()
                if time.monotonic() - self._recovered_at >= _RECOVER_EVERY_S:
                    self._recover()
            except Exception as exc:  # the database is down: the rows stay spooled, tried again next round
                if time.monotonic() - warned_at >= _RECOVER_EVERY_S:  # a line every 10 s, not every round
                    warned_at = time.monotonic()
                    log.warning("audit rows not shipped yet (%s), %d waiting; retrying", type(exc).__name__,
                                len(self._unshipped))
                shipped = 0
            now = time.monotonic()
            if shipped:
                idle_since = now
            elif now - idle_since >= _SHIPPER_IDLE_S:
                with self._spool_lock:
                    if not self._unshipped or self._closed:
                        self._shipper = None
                        return

    def _ship_all(self) -> int:
        """Ship every row spooled so far; how many."""
        total = 0
        while True:
            n = self._ship_some()
            if not n:
                return total
            total += n

    def _ship_some(self) -> int:
        """Ship the oldest spooled rows of one spool file (up to SHIP_MAX_ROWS) in one transaction that also
        moves the file's shipped mark; then remove the file if it is full and every row of it is shipped."""
        with self._ship_lock:
            with self._spool_lock:
                if not self._unshipped:
                    return 0
                spool = self._unshipped[0][1]
                batch = []
                for entry in self._unshipped[:SHIP_MAX_ROWS]:
                    if entry[1] is not spool:
                        break
                    batch.append(entry)
            self._append([row for row, _, _ in batch], spool=(spool.name, batch[-1][2]))
            with self._spool_lock:
                del self._unshipped[: len(batch)]
                # rows are spooled in order, so the full spools older than the oldest unshipped row's are done
                head = self._unshipped[0][1] if self._unshipped else None
                keep = next((i for i, full in enumerate(self._full) if full is head), len(self._full))
                done, self._full = self._full[:keep], self._full[keep:]
            for full in done:
                self._retire(full)
            return len(batch)

    def _retire(self, spool: _SpoolFile) -> None:
        """Remove a fully shipped spool: the file first, then its mark (a file without its mark would be
        shipped again; a mark without its file is only clutter, which `_recover` clears)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool.path)
        spool.close()
        with self.engine.begin() as conn:
            conn.execute(_SPOOL_FORGET, {"spool": spool.name})

    def _recover(self) -> int:
        """Ship the spools of this host's processes that died before shipping them; how many rows."""
        import fcntl

        self._recovered_at = time.monotonic()
        if self.spool_dir is None or not self.spool_dir.is_dir():
            return 0
        total = 0
        own = self._spool.name if self._spool is not None else None
        for path in sorted(self.spool_dir.glob("*" + SPOOL_SUFFIX)):
            if path.name == own:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive (or another process is recovering it)
                if os.fstat(fd).st_nlink == 0:
                    continue  # recovered and removed by another process since we opened it
                total += self._ship_orphan(path, fd)
            finally:
                os.close(fd)
        with self.engine.begin() as conn:  # marks left by a process that died between removing file and mark
            for name in conn.execute(select(_SPOOL.c.name)).scalars().all():
                if not (self.spool_dir / name).exists():
                    conn.execute(_SPOOL_FORGET, {"spool": name})
        return total

    def _ship_orphan(self, path: Path, fd: int) -> int:
        with self.engine.connect() as conn:
            upto = int(conn.execute(_SPOOL_SHIPPED, {"spool": path.name}).scalar() or 0)
        # a last line without its newline was never completed: its record() failed and its request was refused
        lines = _spooled_data(fd, upto).split(b"\n")[:-1]
        shipped, rows, skipped = 0, [], 0
        for i, line in enumerate(lines, 1):
            upto += len(line) + 1
            try:
                rows.append(_spooled_row(line))
            except ValueError:
                skipped += 1
            if len(rows) >= SHIP_MAX_ROWS or i == len(lines):
                self._append(rows, spool=(path.name, upto))
                shipped += len(rows)
                rows = []
        if skipped:
            log.error("audit spool %s: %d unreadable lines skipped", path.name, skipped)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with self.engine.begin() as conn:
            conn.execute(_SPOOL_FORGET, {"spool": path.name})
        if shipped:
            log.info("audit spool %s of a stopped process: %d rows shipped", path.name, shipped)
        return shipped

    def flush(self) -> None:
        """Ship every row this process has spooled, and the spools of dead processes; no-op unless spooling."""
        if self.spool_dir is None:
            return
        self._ship_all()
        self._recover()

    def close(self) -> None:
        """Ship everything and remove this process's spool (at exit)."""
        if self.spool_dir is None or self._closed:
            return
        if not self.spool_dir.is_dir():  # removed with its database (a test's temporary directory)
            self._closed = True
            if self._spool is not None:
                self._spool.close()
            _SPOOLING.discard(self)
            return
        self._ship_all()
        with self._spool_lock:
            spools = [*self._full, *([self._spool] if self._spool is not None else [])]
            self._spool, self._full = None, []
            self._closed = True
        for spool in spools:
            if spool.pid == os.getpid():
                self._retire(spool)
        _SPOOLING.discard(self)

    # -- the table ------------------------------------------------------------------------------------------

    def _append(self, rows: list[dict[str, Any]], spool: tuple[str, int] | None = None) -> None:
        """Append rows in order, chained onto the current head, in one transaction; with `spool`
        (name, bytes), the same transaction records that spool as shipped up to there."""
        if self._host_lock is None:
            self._append_retrying(rows, spool)
            return
        with self._host_lock.held():
            self._append_retrying(rows, spool)

    def _append_retrying(self, rows: list[dict[str, Any]], spool: tuple[str, int] | None) -> None:
        for attempt in range(100):
            try:
                with self.engine.begin() as conn:
                    transaction_lock(conn, _LOCK_KEY)  # appenders of every process and host take turns
                    if rows:
                        head = conn.execute(_HEAD).first()
                        prev, seq = (head[0], int(head[1])) if head is not None else (GENESIS, 0)
                        chained = []
                        for row in rows:
                            digest = _digest(prev, row)
                            seq += 1
                            chained.append({**row, "prev_hash": prev, "hash": digest, "seq": seq})
                            prev = digest
                        _insert(conn, chained)
                    if spool is not None:
                        mark = {"spool": spool[0], "upto": spool[1]}
                        if conn.execute(_SPOOL_MOVE, mark).rowcount == 0:
                            conn.execute(_SPOOL_START, mark)
                return
            except IntegrityError:
                # another writer appended first (SQLite): chain onto the new head after a short pause
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311 (jitter, not security)
        raise RuntimeError("audit trail: could not append after 100 attempts")

    def verify(self) -> AuditCheck:
        self.flush()
        prev = GENESIS
        n = 0
        with self.engine.connect() as conn:
            for r in conn.execute(select(S.AuditEvent).order_by(S.AuditEvent.id)):
                row = {k: getattr(r, k) for k in _FIELDS}
                if r.prev_hash != prev or r.hash != _digest(prev, row):
                    return AuditCheck(ok=False, rows=n, first_bad_id=int(r.id))
                prev = r.hash
                n += 1
        return AuditCheck(ok=True, rows=n, first_bad_id=None)

    def rows(self, *, limit: int = 100, action: str | None = None, username: str | None = None,
             patient_uid: str | None = None, since: datetime | None = None, until: datetime | None = None,
             outcome: str | None = None) -> list[dict[str, Any]]:
        """Rows matching every filter given, newest first, at most `limit`."""
        self.flush()
        stmt = select(S.AuditEvent).order_by(S.AuditEvent.id.desc()).limit(limit)
        if outcome:
            stmt = stmt.where(S.AuditEvent.outcome == outcome)
        if until:
            stmt = stmt.where(S.AuditEvent.at <= until)
        if action:
            stmt = stmt.where(S.AuditEvent.action == action)
        if username:
            stmt = stmt.where(S.AuditEvent.username == username)
        if patient_uid:
            stmt = stmt.where(S.AuditEvent.patient_uid == patient_uid)
        if since:
            stmt = stmt.where(S.AuditEvent.at >= since)
        with self.engine.connect() as conn:
            return [{k: getattr(r, k) for k in ("id", *_FIELDS)} for r in conn.execute(stmt)]


def as_fhir_audit_event(row: dict[str, Any]) -> dict[str, Any]:
    """One audit row as a FHIR R4 AuditEvent (DICOM audit vocabulary for type, outcome codes 0/4/8)."""
    outcome = {"success": "0", "denied": "4", "failed": "4", "error": "8"}.get(row["outcome"], "8")
    event: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": str(row["id"]),
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110",
                 "display": "Patient Record"},
        "subtype": [{"system": "urn:carecast:audit-action", "code": row["action"]}],
        "action": "R" if row["action"].endswith((":read", ":list")) else "E",
        "recorded": row["at"].isoformat(), "outcome": outcome,
        "agent": [{"who": {"identifier": {"value": row["username"] or "anonymous"}}, "requestor": True,
                   "role": [{"text": row["role"] or "none"}],
                   "network": {"address": row["source_ip"] or "unknown", "type": "2"}}],
        "source": {"observer": {"display": "CareCast"}},
    }
    if row.get("patient_uid"):
        event["entity"] = [{"what": {"reference": f"Patient/{row['patient_uid']}"}, "type": {"code": "1"}}]
    return event
