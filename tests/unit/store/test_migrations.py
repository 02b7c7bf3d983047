"""Migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

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
