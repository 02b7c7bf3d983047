"""Shared fixtures. Every test that touches the store runs on SQLite and on PostgreSQL.

PostgreSQL: CARECAST_TEST_POSTGRES_URL (default the local server's `test` database, trust auth).
Each test session works in its own schema, dropped at the end; tables are emptied between tests.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from carecast.config import Settings
from carecast.crypto import Keyring
from carecast.store import Store
from carecast.store.db import make_engine
from carecast.store.migrate import upgrade
from carecast.store.schema import Base
from tests.unit.scoring import TrainedModels, trained_models

PG_URL = os.environ.get("CARECAST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> TrainedModels:
    """A registry with a trained champion and another saved model (tests/unit/scoring), trained once."""
    return trained_models(tmp_path_factory)


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    schema = f"cc_test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # pragma: no cover - environment problem, reported clearly
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}); start it or set "
                    "CARECAST_TEST_POSTGRES_URL")
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _empty_postgres(engine: Engine) -> None:
    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "carecast.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
    else:
        url: str = request.getfixturevalue("pg_schema_url")
        engine = make_engine(url)
        _empty_postgres(engine)
        engine.dispose()
        yield url


@pytest.fixture
def store(database_url: str, keyring: Keyring) -> Iterator[Store]:
    engine = make_engine(database_url)
    s = Store(engine=engine, keyring=keyring)
    yield s
    s.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_ENV": "test"})
