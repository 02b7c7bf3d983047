"""Migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy import text as sa_text

from carecast.crypto import Keyring
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.clinical import ClinicalReader
from carecast.store.db import make_engine
from carecast.store.migrate import alembic_config, current_revision, head_revision, upgrade
from carecast.store.schema import Base


def test_migrated_schema_matches_models(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_at_head_and_upgrade_is_idempotent(store: Store) -> None:
    assert current_revision(store.engine) == head_revision(store.engine)
    upgrade(store.engine)
    assert set(Base.metadata.tables) <= set(inspect(store.engine).get_table_names())


def test_sqlite_uses_wal(backend: str, store: Store) -> None:
    if backend == "sqlite":
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_0004_encrypts_free_text_already_stored_and_needs_the_key(tmp_path: Path) -> None:
    keyring = Keyring.generate()
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0003")
    text_ = "Fall at home, found by neighbour Zyxwvutson"
    with engine.begin() as conn:  # a row stored before revision 0004, its display in clear
        conn.execute(sa_text("INSERT INTO patients (uid, source_key, content_hash, sex, created_at, updated_at) "
                             "VALUES ('u1', 'k1', 'h1', 'female', '2026-01-05 08:00:00', '2026-01-05 08:00:00')"))
        conn.execute(sa_text("INSERT INTO conditions (source_key, content_hash, patient_id, code_system, code, display)"
                             " VALUES ('k2', 'h2', 1, 'icd10', 'W19', :d)"), {"d": text_})
    with pytest.raises(RuntimeError, match=r"conditions\.display"):  # never silently dropped
        upgrade(engine)
    assert current_revision(engine) == "0003"
    upgrade(engine, keyring=keyring)
    with engine.connect() as conn:
        sealed = conn.execute(select(S.Condition.display_enc)).scalar_one()
    assert text_.encode() not in sealed
    assert ClinicalReader(engine, keyring).conditions(1)[0].display == text_
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["keyring"] = keyring
        command.downgrade(cfg, "0003")
    with engine.connect() as conn:
        assert conn.execute(sa_text("SELECT display FROM conditions")).scalar_one() == text_
    engine.dispose()


def test_0005_gives_stored_audit_rows_their_place_in_the_chain(tmp_path: Path) -> None:
    from carecast.security.audit import GENESIS, AuditLog, _digest

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0004")
    prev = GENESIS
    with engine.begin() as conn:  # three rows chained before revision 0005
        for n in range(3):
            row = {"at": datetime(2026, 1, 5, 8, n, tzinfo=UTC), "user_id": n, "username": f"u{n}", "role": "nurse",
                   "action": "patient:read", "patient_uid": f"p{n}", "source_ip": "10.0.0.1", "outcome": "success",
                   "request_id": f"r{n}", "detail": None}
            digest = _digest(prev, row)
            conn.execute(sa_text("INSERT INTO audit_events (at, user_id, username, role, action, patient_uid, "
                                 "source_ip, outcome, request_id, detail, prev_hash, hash) VALUES (:at, :user_id, "
                                 ":username, :role, :action, :patient_uid, :source_ip, :outcome, :request_id, "
                                 ":detail, :prev_hash, :hash)"),
                         {**row, "at": row["at"].replace(tzinfo=None), "prev_hash": prev, "hash": digest})
            prev = digest
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(sa_text("SELECT id, seq FROM audit_events ORDER BY id")).all() == [(1, 1), (2, 2), (3, 3)]
    log = AuditLog(engine)
    log.record(action="patient:read", outcome="success", username="after")
    check = log.verify()
    assert check.ok and check.rows == 4
    with engine.connect() as conn:
        assert conn.execute(sa_text("SELECT max(seq) FROM audit_events")).scalar_one() == 4
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    names = {c["name"] for c in inspect(engine).get_unique_constraints("audit_events")}
    assert names == {"uq_audit_events_prev_hash", "uq_audit_events_hash"}
    assert "seq" not in {c["name"] for c in inspect(engine).get_columns("audit_events")}
    engine.dispose()
