"""Users, passwords, tokens, permissions, patient access and the hash-chained audit trail (both backends)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError

from carecast.jobs.ingest import ingest_paths
from carecast.security import tokens, users
from carecast.security.access import BreakGlassError, can_see_patient, open_break_glass
from carecast.security.audit import AuditLog, as_fhir_audit_event
from carecast.security.passwords import PasswordPolicyError, hash_password, verify_password
from carecast.security.permissions import Permission, Principal
from carecast.store import Store
from carecast.store import schema as S
from tests import factories as F

PASSWORD = "correct horse battery staple"


def test_password_hashing() -> None:
    h = hash_password(PASSWORD)
    assert h.startswith("$argon2id$") and PASSWORD not in h
    assert verify_password(h, PASSWORD) and not verify_password(h, PASSWORD + "!")
    with pytest.raises(PasswordPolicyError):
        hash_password("short")


def test_sign_in_and_lockout(store: Store) -> None:
    users.create_user(store.engine, "nurse.a", PASSWORD, "nurse", ["Ward A"])
    p = users.authenticate(store.engine, "nurse.a", PASSWORD)
    assert p is not None and p.role == "nurse" and p.units == frozenset({"Ward A"})
    assert users.authenticate(store.engine, "nobody", PASSWORD) is None
    for _ in range(users.MAX_FAILURES):
        assert users.authenticate(store.engine, "nurse.a", "wrong password!!") is None
    assert users.authenticate(store.engine, "nurse.a", PASSWORD) is None  # locked, even with the right one
    later = datetime.now(UTC) + users.LOCKOUT + timedelta(seconds=1)
    assert users.authenticate(store.engine, "nurse.a", PASSWORD, now=later) is not None
    with pytest.raises(users.UserError):
        users.create_user(store.engine, "nurse.a", PASSWORD, "nurse")
    with pytest.raises(users.UserError):
        users.create_user(store.engine, "x", PASSWORD, "surgeon")


def test_tokens_are_hashed_scoped_and_expire(store: Store) -> None:
    uid = users.create_user(store.engine, "dr.b", PASSWORD, "clinician", ["Ward B"])
    tok = tokens.issue_token(store.engine, uid, "ehr", ["patient:read"], ttl_hours=1)
    with store.engine.connect() as conn:
        stored = conn.execute(select(S.ApiToken.token_hash)).scalar_one()
    assert tok not in stored and len(stored) == 64
    p = tokens.resolve_token(store.engine, tok)
    assert p is not None and p.can(Permission.PATIENT_READ) and not p.can(Permission.PREDICTION_READ)
    assert tokens.resolve_token(store.engine, tok, now=datetime.now(UTC) + timedelta(hours=2)) is None
    assert tokens.resolve_token(store.engine, "cc_forged") is None
    assert tokens.resolve_token(store.engine, "Bearer nonsense") is None
    with pytest.raises(users.UserError):
        tokens.issue_token(store.engine, uid, "x", ["patient:delete"])
    token_id = tokens.list_tokens(store.engine)[0]["id"]
    tokens.revoke_token(store.engine, int(token_id))  # type: ignore[arg-type]
    assert tokens.resolve_token(store.engine, tok) is None


def test_roles_and_scopes() -> None:
    nurse = Principal(1, "n", "nurse", frozenset({"A"}), None, "session")
    auditor = Principal(2, "a", "auditor", frozenset(), None, "session")
    assert nurse.can(Permission.PATIENT_READ) and not nurse.can(Permission.AUDIT_READ)
    assert auditor.can(Permission.AUDIT_READ) and not auditor.can(Permission.PATIENT_READ)
    assert nurse.unit_restricted and not auditor.unit_restricted


def test_unit_access_and_break_glass(store: Store, tmp_path: Path) -> None:
    (tmp_path / "Patient.ndjson").write_bytes(orjson.dumps(F.patient("p1")) + b"\n")
    (tmp_path / "Encounter.ndjson").write_bytes(
        orjson.dumps(F.encounter("e1", "p1", units=(("Ward B", "2026-01-05T08:00:00Z"),))) + b"\n")
    ingest_paths([tmp_path], store.writer())
    with store.engine.connect() as conn:
        pid = conn.execute(select(S.Patient.id)).scalar_one()
    nurse_a = Principal(1, "n", "nurse", frozenset({"Ward A"}), None, "session")
    nurse_b = Principal(2, "m", "nurse", frozenset({"Ward B"}), None, "session")
    scientist = Principal(3, "d", "data_scientist", frozenset(), None, "session")
    users.create_user(store.engine, "n", PASSWORD, "nurse", ["Ward A"])
    assert can_see_patient(store.engine, nurse_b, pid) and not can_see_patient(store.engine, nurse_a, pid)
    assert can_see_patient(store.engine, scientist, pid)
    with pytest.raises(BreakGlassError):
        open_break_glass(store.engine, store.keyring, nurse_a, pid, "because")
    expires = open_break_glass(store.engine, store.keyring, nurse_a, pid, "rapid response call, bed 12", minutes=30)
    assert can_see_patient(store.engine, nurse_a, pid)
    assert not can_see_patient(store.engine, nurse_a, pid, now=expires + timedelta(seconds=1))
    with store.engine.connect() as conn:
        reason = conn.execute(select(S.BreakGlass.reason_enc)).scalar_one()
    assert b"rapid response" not in reason


def test_audit_chain_verifies_and_detects_tampering(store: Store) -> None:
    log = AuditLog(store.engine)
    who = Principal(7, "dr.c", "clinician", frozenset({"Ward A"}), None, "token")
    for i in range(5):
        log.record(action="patient:read", outcome="success", principal=who, patient_uid=f"uid-{i}",
                   source_ip="10.0.0.1", request_id=f"r{i}")
    log.record(action="auth:failed", outcome="denied", username="mallory", source_ip="10.0.0.9")
    check = log.verify()
    assert check.ok and check.rows == 6
    # filters are applied by the database, every one of them
    assert [r["username"] for r in log.rows(outcome="denied")] == ["mallory"]
    first = log.rows(limit=10)[-1]["at"]
    assert [r["request_id"] for r in log.rows(until=first)] == ["r0"]
    assert log.rows(outcome="denied", until=first) == []
    fhir = as_fhir_audit_event(log.rows(limit=1, action="patient:read")[0])
    assert fhir["resourceType"] == "AuditEvent" and fhir["entity"][0]["what"]["reference"] == "Patient/uid-4"
    with store.engine.begin() as conn:  # an insider edits one row
        conn.execute(update(S.AuditEvent).where(S.AuditEvent.id == 3).values(outcome="denied"))
    bad = log.verify()
    assert not bad.ok and bad.first_bad_id == 3


@pytest.mark.parametrize("text", ["dr.c", 'quote " and \\ backslash', "tab\tnew\nline\x01\x1f", "del\x7f",
                                  "Zoë", "東京", "emoji \U0001F600", ""])
def test_a_row_hash_is_over_the_standard_librarys_canonical_json(text: str) -> None:
    """Rows hashed before orjson wrote the canonical form still verify: the bytes hashed are exactly
    json.dumps(sort_keys, compact) of the fields, whatever characters they hold."""
    from carecast.security import audit as A

    for at in (datetime(2026, 3, 1, 12, 0, 0, 250, tzinfo=UTC), datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
               datetime(2026, 3, 1, 12, 0, 0, 250), datetime(2026, 3, 1, 17, 30, tzinfo=timezone(timedelta(hours=5.5))),
               datetime(2026, 3, 1, 12, 0, 30, tzinfo=timezone(timedelta(seconds=30))), "2026-03-01T12:00:00+00:00"):
        row = {"at": at, "user_id": 7, "username": text, "role": None, "action": "patient:read",
               "patient_uid": text, "source_ip": "10.0.0.1", "outcome": "success", "request_id": text[:64],
               "detail": None}
        body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
        reference = hashlib.sha256((A.GENESIS + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode())
        assert A._digest(A.GENESIS, row) == reference.hexdigest()
        assert A._digest(A.GENESIS, {**row, "seq": 1}) == reference.hexdigest()  # other keys are not hashed


def test_audit_deleting_a_row_breaks_the_chain(store: Store) -> None:
    log = AuditLog(store.engine)
    for i in range(4):
        log.record(action="patient:list", outcome="success", username=f"u{i}")
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = 2"))
    assert log.verify().first_bad_id == 3


def test_two_rows_cannot_take_the_same_place_in_the_chain(store: Store) -> None:
    """The database itself keeps the chain linear: a second row onto the same head is refused."""
    log = AuditLog(store.engine)
    log.record(action="patient:read", outcome="success", username="first")
    with store.engine.connect() as conn:
        head = conn.execute(select(S.AuditEvent).order_by(S.AuditEvent.id.desc()).limit(1)).one()
    rival = {k: getattr(head, k) for k in ("at", "action", "outcome", "username")}
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(insert(S.AuditEvent).values(**rival, prev_hash=head.prev_hash, hash="f" * 64, seq=head.seq))
    log.record(action="patient:read", outcome="success", username="second")
    check = log.verify()
    assert check.ok and check.rows == 2


@pytest.mark.parametrize("group_commit", [False, True], ids=["one-per-transaction", "group-commit"])
def test_concurrent_writers_keep_one_linear_chain(store: Store, group_commit: bool) -> None:
    log = AuditLog(store.engine, group_commit=group_commit)
    other = AuditLog(store.engine, group_commit=group_commit)  # another process's log, appending meanwhile
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(15):
                (log if n % 2 else other).record(action="prediction:read", outcome="success", username=f"w{n}",
                                                 request_id=str(i))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    check = log.verify()
    assert check.ok and check.rows == 60
    rows = log.rows(limit=100)
    assert sorted((r["username"], r["request_id"]) for r in rows) == sorted(
        (f"w{n}", str(i)) for n in range(4) for i in range(15))  # each exactly once


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_sqlite_appenders_of_one_host_take_turns(store: Store, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite, another process holding the host's audit lock makes an append wait for it (rather than
    race on the head and retry), and appenders of one process never retry either."""
    log = AuditLog(store.engine)
    if backend != "sqlite":
        assert log._host_lock is None  # PostgreSQL: the advisory lock serialises appenders
        return
    assert log._host_lock is not None and log._host_lock.path.endswith("carecast.db-audit.lock")
    with subprocess.Popen([sys.executable, "-c", HOLD_LOCK, log._host_lock.path, "0.6"], stdout=subprocess.PIPE,
                          text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        log.record(action="patient:read", outcome="success", username="waited")
        assert time.monotonic() - started > 0.3  # it waited for the other process to let go
    retries: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # time.sleep itself is patched: other threads of the process sleep as usual
        if threading.current_thread().name.startswith("appender-"):
            retries.append(seconds)  # a retry's pause
        else:
            real_sleep(seconds)

    monkeypatch.setattr("carecast.security.audit.time.sleep", sleep)
    others = [AuditLog(store.engine) for _ in range(3)]  # as if three processes
    threads = [threading.Thread(target=lambda lg=lg: [lg.record(action="patient:read", outcome="success",
                                                                username="t") for _ in range(20)],
                                name=f"appender-{i}")
               for i, lg in enumerate(others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert retries == []
    assert log.verify().ok and log.verify().rows == 61


def test_group_commit_shares_transactions_between_concurrent_requests(store: Store,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(store.engine, group_commit=True)
    commits: list[int] = []
    real = log._append

    def slow_commit(rows: list[dict[str, object]]) -> None:
        commits.append(len(rows))
        time.sleep(0.01)  # a commit that takes a while: requests arriving meanwhile wait for the next one
        real(rows)

    monkeypatch.setattr(log, "_append", slow_commit)
    log.record(action="patient:read", outcome="success", username="alone")
    assert commits == [1]  # a request alone commits its own row, at once
    for _ in range(5):  # five times, eight requests at once, each recording its one row
        start = threading.Barrier(8)
        threads = [threading.Thread(target=lambda n=n, start=start: (start.wait(), log.record(
            action="patient:read", outcome="success", username=f"t{n}"))) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(commits) == 41 and len(commits) <= 21  # 40 rows in at most half as many transactions
    assert log.verify().ok and log.verify().rows == 41


def test_group_commit_hands_a_failed_commit_to_the_request(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(store.engine, group_commit=True)
    log.record(action="patient:read", outcome="success", username="before")

    def down(rows: list[dict[str, object]]) -> None:
        raise ConnectionError("database unavailable")

    monkeypatch.setattr(log, "_append", down)
    with pytest.raises(ConnectionError):
        log.record(action="patient:read", outcome="success", username="during")
    monkeypatch.undo()
    log.record(action="patient:read", outcome="success", username="after")  # the writer goes on
    assert [r["username"] for r in log.rows(limit=10)] == ["after", "before"]
    assert log.verify().ok


def test_token_cache_revocation_and_fresh_checks(store: Store) -> None:
    uid = users.create_user(store.engine, "dr.cache", PASSWORD, "clinician", ["Ward A"])
    tok = tokens.issue_token(store.engine, uid, "ehr", [], ttl_hours=1)
    assert tokens.resolve_token(store.engine, tok) is not None
    with store.engine.begin() as conn:  # revoked by another process: this one's cache still answers...
        conn.execute(update(S.ApiToken).values(revoked_at=datetime.now(UTC)))
    assert tokens.resolve_token(store.engine, tok) is not None
    assert tokens.resolve_token(store.engine, tok, fresh=True) is None  # ...but a fresh check sees it
    tok2 = tokens.issue_token(store.engine, uid, "ehr2", [], ttl_hours=1)
    assert tokens.resolve_token(store.engine, tok2) is not None
    tokens.revoke_token(store.engine, int(tokens.list_tokens(store.engine)[-1]["id"]))  # type: ignore[arg-type]
    assert tokens.resolve_token(store.engine, tok2) is None  # revoked here: immediate
    tok3 = tokens.issue_token(store.engine, uid, "ehr3", [], ttl_hours=1)
    assert tokens.resolve_token(store.engine, tok3).units == frozenset({"Ward A"})  # type: ignore[union-attr]
    users.set_units(store.engine, "dr.cache", ["Ward B"])
    assert tokens.resolve_token(store.engine, tok3).units == frozenset({"Ward B"})  # type: ignore[union-attr]
