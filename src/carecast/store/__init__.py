"""The clinical store: open it (migrating on the way), write to it, read from it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from carecast.config import Settings
from carecast.crypto import Keyring, load_keyring
from carecast.store.db import make_engine
from carecast.store.migrate import upgrade
from carecast.store.writer import ClinicalWriter


@dataclass
class Store:
    engine: Engine
    keyring: Keyring

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Store:
        """Keys first (production refuses to start without one), then the database, migrated to head."""
        keyring = load_keyring(settings)
        engine = make_engine(settings.database_url)
        if migrate:
            upgrade(engine, keyring=keyring)
        return cls(engine=engine, keyring=keyring)

    def writer(self) -> ClinicalWriter:
        return ClinicalWriter(self.engine, self.keyring)

    def close(self) -> None:
        self.engine.dispose()
