"""`backup create` / `backup restore`: a backup restores to an identical database (row counts and content
hashes of every table), with the model registry and the sealed keyring."""

from __future__ import annotations

import stat
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from tests.unit.security.test_deid_figure12 import seed_every_identifier

from carecast.config import Settings
from carecast.crypto import Keyring, write_key_file
from carecast.errors import CareCastError
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.backup import BackupError, create_backup, keyring_needs_seal, restore_backup, table_fingerprints

PASS = "correct horse battery staple"


@pytest.fixture
def installed(store: Store, database_url: str, tmp_path: Path) -> tuple[Settings, Store]:
    settings = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_ENV": "test",
                                  "CARECAST_DATABASE_URL": database_url})
    write_key_file(settings.key_file, store.keyring)
    models = Path(settings.model_registry) / "deterioration_24h" / "v1"
    models.mkdir(parents=True)
    (models / "model.joblib").write_bytes(b"model bytes")
    seed_every_identifier(store, tmp_path)
    return settings, store


def test_backup_restores_an_identical_database(installed: tuple[Settings, Store], tmp_path: Path) -> None:
    settings, store = installed
    original = table_fingerprints(store.engine)
    assert original["patients"]["rows"] == 2 and original["observations"]["rows"] == 4
    out = tmp_path / "b" / "backup.tar"
    info = create_backup(settings, store.engine, out, passphrase=PASS)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert info.manifest["tables"] == original and "keyring.sealed" in info.manifest["members"]
    assert store.keyring.to_json().encode() not in out.read_bytes()  # the keyring is sealed, not in clear
    # Damage the installation: data changed and deleted, a model file lost, the key file replaced.
    with store.engine.begin() as conn:
        conn.execute(delete(S.Observation))
        conn.execute(S.Patient.__table__.update().values(sex="other"))
    (Path(settings.model_registry) / "deterioration_24h" / "v1" / "model.joblib").unlink()
    write_key_file(settings.key_file, Keyring.generate())
    assert table_fingerprints(store.engine) != original
    result = restore_backup(settings, store.engine, out, passphrase=PASS)
    assert result.tables == original == table_fingerprints(store.engine)
    assert (Path(settings.model_registry) / "deterioration_24h" / "v1" / "model.joblib").read_bytes() == b"model bytes"
    assert Keyring.from_json(settings.key_file.read_text()).active_id == store.keyring.active_id
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
    with store.engine.connect() as conn:
        tok = conn.execute(select(S.Patient.ssn_enc).where(S.Patient.ssn_enc.is_not(None))).scalars().first()
    assert store.keyring.decrypt(tok, "patients.ssn")


def test_wrong_passphrase_and_damage_are_refused(installed: tuple[Settings, Store], tmp_path: Path) -> None:
    settings, store = installed
    out = tmp_path / "backup.tar"
    create_backup(settings, store.engine, out, passphrase=PASS)
    before = table_fingerprints(store.engine)
    with pytest.raises(BackupError, match="passphrase"):
        restore_backup(settings, store.engine, out, passphrase="not the right one")
    assert table_fingerprints(store.engine) == before  # nothing was touched
    damaged = tmp_path / "damaged.tar"
    blob = bytearray(out.read_bytes())
    with tarfile.open(out) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("database."))
    blob[member.offset_data + member.size // 2] ^= 0xFF  # flip a byte inside the database copy
    damaged.write_bytes(bytes(blob))
    with pytest.raises(BackupError, match="damaged"):
        restore_backup(settings, store.engine, damaged, passphrase=PASS)
    assert table_fingerprints(store.engine) == before


def test_backup_without_keyring_needs_no_passphrase(installed: tuple[Settings, Store], tmp_path: Path) -> None:
    settings, store = installed
    with pytest.raises(CareCastError):
        create_backup(settings, store.engine, tmp_path / "x.tar")  # a keyring without a passphrase: refused
    info = create_backup(settings, store.engine, tmp_path / "y.tar", include_keyring=False)
    assert not any(m.startswith("keyring") for m in info.manifest["members"])
    with pytest.raises(BackupError):
        create_backup(settings, store.engine, tmp_path / "y.tar", include_keyring=False)  # never overwrites


def test_a_write_during_the_backup_is_in_neither_the_copy_nor_its_fingerprints(
        installed: tuple[Settings, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A running server writes while a backup is taken (every request appends an audit row): the manifest's
    fingerprints must describe the copy, or the restore of a good backup is refused."""
    settings, store = installed
    from carecast.store import backup

    copy = backup._sqlite_copy if store.engine.dialect.name == "sqlite" else None
    run = backup._run

    def meanwhile() -> None:
        with store.engine.begin() as conn:
            conn.execute(S.Patient.__table__.update().values(sex="unknown"))

    def write_after(*args: object, **kwargs: object) -> object:
        found = (copy or run)(*args, **kwargs)  # type: ignore[operator]
        meanwhile()  # right after the copy was made, before anything else
        return found

    monkeypatch.setattr(backup, "_sqlite_copy" if copy else "_run", write_after)
    out = tmp_path / "during.tar"
    info = create_backup(settings, store.engine, out, passphrase=PASS)
    monkeypatch.undo()
    assert info.manifest["tables"] != table_fingerprints(store.engine)  # the live data moved on
    result = restore_backup(settings, store.engine, out, passphrase=PASS)  # the copy is still exactly what it says
    assert result.tables == info.manifest["tables"] == table_fingerprints(store.engine)


def test_with_the_key_in_the_environment_no_passphrase_is_needed(installed: tuple[Settings, Store],
                                                                  tmp_path: Path) -> None:
    """CARECAST_DATA_KEY set and a key file left on disk: the key file is not backed up, so nothing to seal."""
    settings, store = installed
    from dataclasses import replace

    with_env_key = replace(settings, data_key="not-used-by-the-backup")
    assert settings.key_file.exists() and not keyring_needs_seal(with_env_key)
    info = create_backup(with_env_key, store.engine, tmp_path / "env-key.tar")
    assert info.manifest["keyring"].startswith("not included: the key comes from CARECAST_DATA_KEY")
