"""`keys rotate`: every value re-encrypted under a new key, the old key retired, lookups intact, no plaintext."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select, update
from tests import factories as F
from tests.unit.security.test_deid_figure12 import seed_every_identifier

from carecast.config import Settings
from carecast.crypto import Keyring, load_keyring, write_key_file
from carecast.errors import ConfigError, DecryptionError
from carecast.security.keyrotation import RotationIncompleteError, rotate_keys
from carecast.store import Store
from carecast.store import schema as S
from carecast.store.backup import read_manifest
from carecast.store.keys import encrypted_columns, key_usage, reencrypt_all

PASS = "correct horse battery staple"


@pytest.fixture
def rot(store: Store, database_url: str, tmp_path: Path) -> tuple[Settings, Store]:
    """A store whose keyring lives in a key file (as rotation requires), seeded with every identifier."""
    settings = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path / "var"), "CARECAST_ENV": "test",
                                  "CARECAST_DATABASE_URL": database_url})
    keyring = Keyring.generate()
    write_key_file(settings.key_file, keyring)
    own = Store(engine=store.engine, keyring=keyring)
    seed_every_identifier(own, tmp_path, in_clear_text_columns=False)
    return settings, own


def _all_plain(store: Store) -> dict[tuple[str, int], str]:
    out = {}
    with store.engine.connect() as conn:
        for ec in encrypted_columns():
            for rid, tok in conn.execute(select(ec.table.c.id, ec.column).where(ec.column.is_not(None))):
                out[(ec.name, int(rid))] = store.keyring.decrypt(bytes(tok), ec.context)
    return out


def _raw_bytes(store: Store, backend: str) -> bytes:
    if backend == "sqlite":
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            dump = "\n".join(conn.connection.dbapi_connection.iterdump())
        return Path(store.engine.url.database or "").read_bytes() + dump.encode()
    url = store.engine.url
    schema = (url.query.get("options") or "").split("search_path=")[-1]
    return subprocess.run(["pg_dump", "-h", url.host or "127.0.0.1", "-U", url.username or "postgres", "-n",
                           str(schema), "--data-only", "--inserts", url.database or "test"],
                          check=True, capture_output=True).stdout


def test_rotation_reencrypts_everything_and_retires_the_old_key(rot: tuple[Settings, Store], backend: str,
                                                                tmp_path: Path) -> None:
    settings, store = rot
    old = store.keyring
    before = _all_plain(store)
    assert len(before) >= 15
    report = rotate_keys(settings, store, backup_path=tmp_path / "pre.tar", passphrase=PASS)
    new = load_keyring(settings, create=False)
    assert report.new_key == new.active_id != old.active_id
    assert report.retired == [old.active_id] and old.active_id in new.retired
    assert old.active_id not in new.data_keys  # material dropped once nothing needs it
    assert report.backup is not None and read_manifest(report.backup)["backend"] == store.engine.dialect.name
    assert sum(report.reencrypted.values()) == len(before)
    # Every value decrypts with the new key only, to what it was.
    usage = key_usage(store.engine)
    assert {kid for counts in usage.values() for kid in counts} == {new.active_id}
    assert _all_plain(Store(engine=store.engine, keyring=new)) == before
    only_old = Keyring(active_id=old.active_id, data_keys=old.data_keys, index_key=old.index_key)
    with pytest.raises(DecryptionError):
        _all_plain(Store(engine=store.engine, keyring=only_old))
    # Lookups by natural key and by MRN still work, and writes still deduplicate.
    with store.engine.connect() as conn:
        mrn_row = conn.execute(select(S.Patient.id).where(
            S.Patient.mrn_index == new.blind_index(F.SECRET_IDENTIFIERS["mrn"], "patients.mrn"))).one_or_none()
        n_obs = conn.execute(select(S.Observation.id)).all()
    assert mrn_row is not None
    store.keyring = new
    seed_dir = tmp_path / "again"
    seed_dir.mkdir()
    from tests.unit.security.test_deid_figure12 import seed_every_identifier as reseed

    with pytest.raises(AssertionError):  # nothing new is inserted: every record is found by its natural key
        reseed(store, seed_dir, in_clear_text_columns=False)
    with store.engine.connect() as conn:
        assert len(conn.execute(select(S.Observation.id)).all()) == len(n_obs)
    # No encrypted value is anywhere in clear after rotation.
    blob = _raw_bytes(store, backend)
    for value in before.values():
        assert value.encode() not in blob
    for key in ("mrn", "ssn", "birth", "line", "postal", "phone", "device", "accession", "study_uid"):
        assert F.SECRET_IDENTIFIERS[key].encode() not in blob


def test_an_interrupted_rotation_resumes(rot: tuple[Settings, Store], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    settings, store = rot
    before = _all_plain(store)
    import carecast.security.keyrotation as kr

    def crash(engine: object, keyring: Keyring, **kw: object) -> None:
        reencrypt_all(engine, keyring, batch=1)
        raise KeyboardInterrupt

    # First run: re-encrypts, then "crashes" before retiring; the key file keeps both keys.
    monkeypatch.setattr(kr, "reencrypt_all", crash)
    with pytest.raises(KeyboardInterrupt):
        rotate_keys(settings, store, backup_path=tmp_path / "pre.tar", passphrase=PASS)
    mid = load_keyring(settings, create=False)
    assert len(mid.retiring) == 1
    assert _all_plain(Store(engine=store.engine, keyring=mid)) == before
    # Put one value back under the retired key, as if the crash had come earlier.
    old_id = mid.retiring[0]
    with store.engine.begin() as conn:
        pid, tok = conn.execute(select(S.Patient.id, S.Patient.ssn_enc).where(S.Patient.ssn_enc.is_not(None))).first()
        old_only = Keyring(active_id=old_id, data_keys={old_id: mid.data_keys[old_id]}, index_key=mid.index_key)
        conn.execute(update(S.Patient).where(S.Patient.id == pid).values(
            ssn_enc=old_only.encrypt(mid.decrypt(tok, "patients.ssn"), "patients.ssn")))
    monkeypatch.undo()
    report = rotate_keys(settings, store, backup_path=None)
    assert report.resumed and report.backup is None and report.reencrypted["patients.ssn_enc"] == 1
    final = load_keyring(settings, create=False)
    assert final.active_id == mid.active_id and not final.retiring
    assert _all_plain(Store(engine=store.engine, keyring=final)) == before


def test_rotation_refuses_to_drop_a_key_still_in_use(rot: tuple[Settings, Store], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    settings, store = rot
    import carecast.security.keyrotation as kr

    monkeypatch.setattr(kr, "reencrypt_all", lambda engine, keyring, **k: type("R", (), {"rewritten": {}})())
    with pytest.raises(RotationIncompleteError):
        rotate_keys(settings, store, backup_path=tmp_path / "pre.tar", passphrase=PASS)
    assert load_keyring(settings, create=False).retiring  # the retired key's material is kept


def test_rotation_needs_a_key_file(tmp_path: Path, store: Store) -> None:
    env = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path), "CARECAST_ENV": "test",
                             "CARECAST_DATA_KEY": "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="})
    with pytest.raises(ConfigError):
        rotate_keys(env, store, backup_path=tmp_path / "b.tar")


def test_keyring_json_keeps_retirement(tmp_path: Path) -> None:
    ring = Keyring.generate().rotated("2026-01-01T00:00:00+00:00")
    back = Keyring.from_json(ring.to_json())
    assert back.retired == ring.retired and back.retiring == ring.retiring
    done = back.without_retired_material()
    assert done.retiring == [] and list(done.data_keys) == [done.active_id]
    token = ring.encrypt("x", "c")
    assert done.decrypt(token, "c") == "x"
    with pytest.raises(DecryptionError, match="retired"):
        done.decrypt(Keyring(active_id=ring.retiring[0], data_keys=ring.data_keys, index_key=ring.index_key)
                     .encrypt("x", "c"), "c")
    with pytest.raises(ConfigError):
        Keyring(active_id=ring.active_id, data_keys=ring.data_keys, index_key=ring.index_key,
                retired={ring.active_id: "now"})
