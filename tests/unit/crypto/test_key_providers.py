"""Key providers: the local keys (unchanged behaviour) and Cloud KMS envelope encryption, with a fake KMS
that, like the real one, binds each ciphertext to the key that made it."""

from __future__ import annotations

import base64
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from carecast.config import Settings
from carecast.crypto import (
    GoogleCloudKms,
    Keyring,
    KmsKeyProvider,
    LocalKeyProvider,
    crc32c,
    key_provider,
    load_keyring,
    wrap_data_key,
)
from carecast.errors import ConfigError, KeyMissingError

KEY = "projects/demo/locations/europe-west2/keyRings/carecast/cryptoKeys/data-key"
OTHER_KEY = "projects/demo/locations/europe-west2/keyRings/carecast/cryptoKeys/other"


class Refused(Exception):
    """What the fake raises where Cloud KMS would answer PERMISSION_DENIED or INVALID_ARGUMENT."""


@dataclass
class FakeKms:
    """An in-memory KMS: one secret AES key per key name that never leaves it; counts its calls."""

    keys: dict[str, bytes] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)
    decrypts: int = 0

    def _aead(self, key_name: str) -> Any:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if key_name in self.denied:
            raise Refused("permission denied")
        return AESGCM(self.keys.setdefault(key_name, secrets.token_bytes(32)))

    def encrypt(self, key_name: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead(key_name).encrypt(nonce, plaintext, key_name.encode())

    def decrypt(self, key_name: str, ciphertext: bytes) -> bytes:
        self.decrypts += 1
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(self._aead(key_name).decrypt(ciphertext[:12], ciphertext[12:], key_name.encode()))
        except InvalidTag:
            raise Refused("the ciphertext was not made with this key") from None


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"CARECAST_DATA_DIR": str(tmp_path), **env})


def test_kms_key_name_is_validated() -> None:
    for bad in ("projects/demo/keyRings/carecast", KEY + "/cryptoKeyVersions/1", KEY.replace("/locations/", "//")):
        with pytest.raises(ConfigError, match="CARECAST_KMS_KEY has an invalid value"):
            Settings.from_env({"CARECAST_KMS_KEY": bad})
    assert Settings.from_env({"CARECAST_KMS_KEY": KEY}).kms_key == KEY


def test_without_kms_the_local_provider_keeps_todays_behaviour(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    provider = key_provider(settings)
    assert isinstance(provider, LocalKeyProvider)
    ring = provider.keyring()  # creates the key file outside production
    assert (tmp_path / "keys" / "keyring.json").exists()
    assert load_keyring(settings).data_keys == ring.data_keys


def test_wrapped_master_key_unwraps_to_the_same_keyring_as_the_plain_one(tmp_path: Path) -> None:
    kms = FakeKms()
    master = secrets.token_bytes(32)
    wrapped = wrap_data_key(kms, KEY, master)
    assert base64.b64decode(wrapped) != master
    plain = load_keyring(_settings(tmp_path, CARECAST_DATA_KEY=base64.b64encode(master).decode()))
    settings = _settings(tmp_path, CARECAST_KMS_KEY=KEY, CARECAST_DATA_KEY=wrapped, CARECAST_ENV="production")
    unwrapped = load_keyring(settings, kms_client=kms)
    assert unwrapped.data_keys == plain.data_keys and unwrapped.index_key == plain.index_key
    token = plain.encrypt("MRN-1", "patients.mrn")
    assert unwrapped.decrypt(token, "patients.mrn") == "MRN-1"
    assert kms.decrypts == 1
    assert not (tmp_path / "keys").exists()  # nothing written to disk


def test_wrapped_keyring_json_keeps_every_data_key_for_rotation(tmp_path: Path) -> None:
    kms = FakeKms()
    old, new = Keyring.generate(), Keyring.generate()
    both = Keyring(active_id=new.active_id, data_keys={**old.data_keys, **new.data_keys}, index_key=old.index_key)
    key_file = tmp_path / "wrapped.b64"
    key_file.write_text(wrap_data_key(kms, KEY, both.to_json().encode()) + "\n")
    ring = load_keyring(_settings(tmp_path, CARECAST_KMS_KEY=KEY, CARECAST_KEY_FILE=str(key_file)), kms_client=kms)
    assert ring.active_id == new.active_id
    assert ring.decrypt(old.encrypt("x", "c"), "c") == "x"  # values written with the old key stay readable


def test_a_master_key_starting_with_a_brace_is_still_a_master_key(tmp_path: Path) -> None:
    kms = FakeKms()
    master = b"{" + secrets.token_bytes(31)
    settings = _settings(tmp_path, CARECAST_KMS_KEY=KEY, CARECAST_DATA_KEY=wrap_data_key(kms, KEY, master))
    assert load_keyring(settings, kms_client=kms).data_keys == Keyring.from_master(master).data_keys


def test_the_wrong_kms_key_or_a_refusal_is_a_config_error_naming_no_secret(tmp_path: Path) -> None:
    kms = FakeKms()
    wrapped = wrap_data_key(kms, OTHER_KEY, secrets.token_bytes(32))
    settings = _settings(tmp_path, CARECAST_KMS_KEY=KEY, CARECAST_DATA_KEY=wrapped)
    with pytest.raises(ConfigError, match=r"could not unwrap .*\(Refused\)") as err:
        load_keyring(settings, kms_client=kms)
    assert wrapped not in str(err.value)
    kms.denied.add(KEY)
    with pytest.raises(ConfigError, match="could not unwrap"):
        KmsKeyProvider(KEY, base64.b64decode(wrapped), kms).keyring()


def test_kms_needs_a_wrapped_key_and_refuses_a_short_one(tmp_path: Path) -> None:
    kms = FakeKms()
    with pytest.raises(KeyMissingError, match="no wrapped data key"):
        load_keyring(_settings(tmp_path, CARECAST_KMS_KEY=KEY), kms_client=kms)
    with pytest.raises(ConfigError, match="not valid base64"):
        load_keyring(_settings(tmp_path, CARECAST_KMS_KEY=KEY, CARECAST_DATA_KEY="not base64!"), kms_client=kms)
    short = wrap_data_key(kms, KEY, b"too short")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load_keyring(_settings(tmp_path, CARECAST_KMS_KEY=KEY, CARECAST_DATA_KEY=short), kms_client=kms)


def test_the_real_client_is_imported_only_when_kms_is_selected(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.kms", None)  # as if google-cloud-kms were not installed
    monkeypatch.setitem(sys.modules, "google.cloud", None)
    assert isinstance(key_provider(_settings(tmp_path)), LocalKeyProvider)  # local keys never import it
    wrapped = base64.b64encode(b"x" * 48).decode()
    with pytest.raises(ConfigError, match="google-cloud-kms is not installed"):
        load_keyring(_settings(tmp_path, CARECAST_KMS_KEY=KEY, CARECAST_DATA_KEY=wrapped))


def test_crc32c_matches_the_castagnoli_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert crc32c(b"") == 0


class FakeGoogleClient:
    """Stands in for google.cloud.kms.KeyManagementServiceClient: request dicts in, responses with CRC32C out."""

    def __init__(self, kms: FakeKms, corrupt: bool = False) -> None:
        self.kms, self.corrupt = kms, corrupt
        self.requests: list[dict[str, Any]] = []

    def encrypt(self, request: dict[str, Any]) -> Any:
        self.requests.append(request)
        assert request["plaintext_crc32c"] == crc32c(request["plaintext"])
        ciphertext = self.kms.encrypt(request["name"], request["plaintext"])
        return SimpleNamespace(ciphertext=ciphertext, ciphertext_crc32c=crc32c(ciphertext),
                               verified_plaintext_crc32c=True)

    def decrypt(self, request: dict[str, Any]) -> Any:
        self.requests.append(request)
        assert request["ciphertext_crc32c"] == crc32c(request["ciphertext"])
        plaintext = self.kms.decrypt(request["name"], request["ciphertext"])
        checksum = crc32c(plaintext) ^ (1 if self.corrupt else 0)
        return SimpleNamespace(plaintext=plaintext, plaintext_crc32c=checksum)


def test_google_adapter_sends_checksums_and_refuses_a_corrupted_answer(tmp_path: Path) -> None:
    kms = FakeKms()
    client = GoogleCloudKms(FakeGoogleClient(kms))
    master = secrets.token_bytes(32)
    wrapped = wrap_data_key(client, KEY, master)
    settings = _settings(tmp_path, CARECAST_KMS_KEY=KEY, CARECAST_DATA_KEY=wrapped)
    assert load_keyring(settings, kms_client=client).data_keys == Keyring.from_master(master).data_keys
    with pytest.raises(ConfigError, match="corrupted in transit"):
        load_keyring(settings, kms_client=GoogleCloudKms(FakeGoogleClient(kms, corrupt=True)))
