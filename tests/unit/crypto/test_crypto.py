from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from carecast.config import Settings
from carecast.crypto import Keyring, load_keyring, write_key_file
from carecast.errors import ConfigError, DecryptionError, KeyMissingError


def test_roundtrip_and_key_id_tag() -> None:
    ring = Keyring.generate()
    token = ring.encrypt("Jane Q. Public", "patients.family_name")
    assert b"Jane" not in token
    assert Keyring.key_id_of(token) == ring.active_id
    assert ring.decrypt(token, "patients.family_name") == "Jane Q. Public"


def test_same_plaintext_encrypts_differently() -> None:
    ring = Keyring.generate()
    assert ring.encrypt("123", "c") != ring.encrypt("123", "c")


def test_ciphertext_bound_to_its_column() -> None:
    ring = Keyring.generate()
    token = ring.encrypt("MRN001", "patients.mrn")
    with pytest.raises(DecryptionError):
        ring.decrypt(token, "patients.ssn")


def test_tampering_is_detected() -> None:
    ring = Keyring.generate()
    token = bytearray(ring.encrypt("value", "c"))
    token[-1] ^= 1
    with pytest.raises(DecryptionError):
        ring.decrypt(bytes(token), "c")


def test_rotation_keeps_old_values_readable() -> None:
    old = Keyring.generate()
    token = old.encrypt("old secret", "c")
    new_key = Keyring.generate()
    rotated = Keyring(active_id=new_key.active_id, data_keys={**old.data_keys, **new_key.data_keys},
                      index_key=old.index_key)
    assert rotated.decrypt(token, "c") == "old secret"
    assert Keyring.key_id_of(rotated.encrypt("new", "c")) == new_key.active_id
    retired = Keyring(active_id=new_key.active_id, data_keys=dict(new_key.data_keys), index_key=old.index_key)
    with pytest.raises(DecryptionError, match="not in the keyring"):
        retired.decrypt(token, "c")


def test_blind_index_is_deterministic_keyed_and_contextual() -> None:
    a, b = Keyring.generate(), Keyring.generate()
    assert a.blind_index("MRN1", "patients.mrn") == a.blind_index("MRN1", "patients.mrn")
    assert a.blind_index("MRN1", "patients.mrn") != b.blind_index("MRN1", "patients.mrn")
    assert a.blind_index("MRN1", "patients.mrn") != a.blind_index("MRN1", "devices.serial")


def test_key_file_created_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path)})
    ring = load_keyring(settings)
    mode = stat.S_IMODE(settings.key_file.stat().st_mode)
    assert mode == 0o600
    assert load_keyring(settings).data_keys == ring.data_keys  # second start reads the same key


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    write_key_file(path, Keyring.generate())
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_keyring(Settings.from_env({"CARECAST_KEY_FILE": str(path)}))


def test_production_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    settings = Settings.from_env({"CARECAST_ENV": "production", "CARECAST_DATA_DIR": str(tmp_path)})
    with pytest.raises(KeyMissingError):
        load_keyring(settings)
    assert not settings.key_file.exists()


def test_env_key_is_used_and_validated(tmp_path: Path) -> None:
    master = base64.b64encode(os.urandom(32)).decode()
    env = {"CARECAST_DATA_KEY": master, "CARECAST_DATA_DIR": str(tmp_path), "CARECAST_ENV": "production"}
    ring1 = load_keyring(Settings.from_env(env))
    ring2 = load_keyring(Settings.from_env(env))
    assert ring1.blind_index("x", "c") == ring2.blind_index("x", "c")
    assert not (tmp_path / "keys").exists()
    with pytest.raises(ConfigError, match="CARECAST_DATA_KEY"):
        load_keyring(Settings.from_env({"CARECAST_DATA_KEY": "not base64!"}))
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load_keyring(Settings.from_env({"CARECAST_DATA_KEY": base64.b64encode(b"short").decode()}))
