"""Field-level encryption (AES-256-GCM) and keyed blind indexes (HMAC-SHA256).

Every ciphertext names the key that made it, so keys can rotate: new values are written with the
active key, old ones stay readable while their key is in the keyring. The associated data binds a
ciphertext to its column (`context`), so a value cannot be moved to another column unnoticed.

Token layout: version byte 0x01 | key-id length (1 byte) | key id (ASCII) | 12-byte nonce | ciphertext+tag.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from carecast.config import Settings
from carecast.errors import ConfigError, DecryptionError, KeyMissingError

_VERSION = 1
_NONCE = 12


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def key_id_for(key: bytes) -> str:
    """A short public name for a key: the start of a hash of it (reveals nothing usable)."""
    return hashlib.sha256(b"carecast-key-id" + key).hexdigest()[:12]


@dataclass
class Keyring:
    """Data keys by id, the id of the active one, and the blind-index key."""

    active_id: str
    data_keys: dict[str, bytes]
    index_key: bytes = field(repr=False)
    # Key id -> when it was retired (ISO 8601). A retired key never encrypts; its material stays only until
    # `carecast keys rotate` has re-encrypted every value it made, then only this record of it remains.
    retired: dict[str, str] = field(default_factory=dict)
    _aead: dict[str, AESGCM] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.active_id not in self.data_keys:
            raise ConfigError("the keyring's active key is not among its keys")
        if self.active_id in self.retired:
            raise ConfigError("the keyring's active key is marked retired")
        for kid, key in self.data_keys.items():
            if len(key) != 32:
                raise ConfigError(f"data key {kid} is not 32 bytes")
            self._aead[kid] = AESGCM(key)

    @classmethod
    def from_master(cls, master: bytes) -> Keyring:
        data_key = _derive(master, b"carecast data key v1")
        return cls(active_id=key_id_for(data_key), data_keys={key_id_for(data_key): data_key},
                   index_key=_derive(master, b"carecast blind index v1"))

    @classmethod
    def generate(cls) -> Keyring:
        key = AESGCM.generate_key(bit_length=256)
        return cls(active_id=key_id_for(key), data_keys={key_id_for(key): key},
                   index_key=secrets.token_bytes(32))

    # -- encryption -------------------------------------------------------------------------------
    def encrypt(self, plaintext: str, context: str) -> bytes:
        kid = self.active_id.encode("ascii")
        nonce = os.urandom(_NONCE)
        sealed = self._aead[self.active_id].encrypt(nonce, plaintext.encode("utf-8"), context.encode())
        return bytes((_VERSION, len(kid))) + kid + nonce + sealed

    def decrypt(self, token: bytes, context: str) -> str:
        if len(token) < 2 or token[0] != _VERSION:
            raise DecryptionError("ciphertext has an unknown format")
        n = token[1]
        kid = token[2 : 2 + n].decode("ascii", errors="replace")
        aead = self._aead.get(kid)
        if aead is None:
            state = "was retired" if kid in self.retired else "is not in the keyring"
            raise DecryptionError(f"ciphertext was made with key {kid}, which {state}")
        nonce = token[2 + n : 2 + n + _NONCE]
        try:
            return aead.decrypt(nonce, token[2 + n + _NONCE :], context.encode()).decode("utf-8")
        except InvalidTag:
            raise DecryptionError(f"ciphertext failed authentication for {context}") from None

    @staticmethod
    def key_id_of(token: bytes) -> str:
        return token[2 : 2 + token[1]].decode("ascii", errors="replace")

    # -- rotation -----------------------------------------------------------------------------------
    def rotated(self, retired_at: str) -> Keyring:
        """A keyring with a new random data key active and the current one retired (still able to decrypt).
        The blind-index key is kept: natural keys are stored only as its hashes, so they cannot be recomputed."""
        key = AESGCM.generate_key(bit_length=256)
        kid = key_id_for(key)
        return Keyring(active_id=kid, data_keys={**self.data_keys, kid: key}, index_key=self.index_key,
                       retired={**self.retired, self.active_id: retired_at})

    @property
    def retiring(self) -> list[str]:
        """Retired keys whose material is still here: a rotation has not finished re-encrypting."""
        return sorted(k for k in self.retired if k in self.data_keys)

    def without_retired_material(self) -> Keyring:
        """The same keyring with the material of retired keys dropped (their ids stay, marked retired)."""
        return Keyring(active_id=self.active_id,
                       data_keys={k: v for k, v in self.data_keys.items() if k not in self.retired},
                       index_key=self.index_key, retired=dict(self.retired))

    # -- keyed hashes -----------------------------------------------------------------------------
    def blind_index(self, value: str, context: str) -> str:
        """Deterministic keyed hash (HMAC-SHA256, truncated to 128 bits) for equality lookups:
        MRN, device serial, natural keys."""
        return hmac.digest(self.index_key, (context + "\x00" + value).encode("utf-8"), "sha256")[:16].hex()

    def record_key(self, natural_key: str) -> str:
        """The stored identity of an incoming record ("Observation/123"): keyed BLAKE2b (a MAC, like
        HMAC, and about twice as fast on the bulk path), so source ids never sit in the store in clear."""
        return hashlib.blake2b(natural_key.encode("utf-8"), key=self.index_key, digest_size=16,
                               person=b"cc-record-key").hexdigest()

    # -- persistence ------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "version": 1,
            "active": self.active_id,
            "data_keys": {k: base64.b64encode(v).decode() for k, v in self.data_keys.items()},
            "index_key": base64.b64encode(self.index_key).decode(),
            **({"retired": dict(sorted(self.retired.items()))} if self.retired else {}),
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        try:
            doc = json.loads(text)
            return cls(active_id=doc["active"],
                       data_keys={k: base64.b64decode(v) for k, v in doc["data_keys"].items()},
                       index_key=base64.b64decode(doc["index_key"]),
                       retired={str(k): str(v) for k, v in doc.get("retired", {}).items()})
        except (KeyError, ValueError, TypeError, AttributeError, binascii.Error):
            raise ConfigError("the key file is not a valid CareCast keyring") from None


def write_private_file(path: Path, content: bytes) -> None:
    """Replace `path` with `content`, readable by its owner only (mode 0600, its folder 0700), never through a
    wider mode and never half-written (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_key_file(path: Path, keyring: Keyring) -> None:
    """Write a keyring readable by its owner only (mode 0600)."""
    write_private_file(path, keyring.to_json().encode("utf-8"))


def load_keyring(settings: Settings, *, create: bool = True, kms_client: KmsClient | None = None) -> Keyring:
    """The keyring from the configured key provider (`key_provider`): Cloud KMS when CARECAST_KMS_KEY is set,
    else CARECAST_DATA_KEY, else the key file, else a new key file.

    Production never creates a key: it refuses to start without one.
    """
    return key_provider(settings, create=create, kms_client=kms_client).keyring()


def new_master_key() -> str:
    """A fresh base64 master key, for `carecast keys generate`."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


# -- key providers: where the keyring comes from ----------------------------------------------------------------
#
# Local (the default): CARECAST_DATA_KEY holds the master key itself, or the key file holds the keyring.
# Cloud KMS (CARECAST_KMS_KEY set), envelope encryption: the master key (or a keyring JSON, for several data
# keys) is stored only wrapped by a KMS key that never leaves KMS; CARECAST_DATA_KEY, or the key file, holds
# the base64 of that ciphertext, and KMS unwraps it once at start. Revoking the service's KMS permission
# makes the stored data unreadable to it without touching the database.


class KeyProvider(Protocol):
    """Something that yields the keyring the store encrypts with."""

    def keyring(self) -> Keyring: ...


class KmsClient(Protocol):
    """The two calls of a key-management service that envelope encryption needs (Cloud KMS, or a fake)."""

    def encrypt(self, key_name: str, plaintext: bytes) -> bytes: ...

    def decrypt(self, key_name: str, ciphertext: bytes) -> bytes: ...


def _keyring_from_master_b64(value: str, source: str) -> Keyring:
    try:
        master = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source} is not valid base64") from None
    if len(master) < 32:
        raise ConfigError(f"{source} must decode to at least 32 bytes")
    return Keyring.from_master(master)


@dataclass
class LocalKeyProvider:
    """The keyring from CARECAST_DATA_KEY, else from the key file, else a new key file (never in production)."""

    settings: Settings
    create: bool = True

    def keyring(self) -> Keyring:
        settings = self.settings
        if settings.data_key:
            return _keyring_from_master_b64(settings.data_key, "CARECAST_DATA_KEY")
        path = settings.key_file
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise ConfigError(f"key file {path} is readable by others (mode {mode:o}); chmod 600 it")
            return Keyring.from_json(path.read_text(encoding="utf-8"))
        if settings.is_production or not self.create:
            raise KeyMissingError(
                "no data key: set CARECAST_DATA_KEY or provide CARECAST_KEY_FILE "
                "(production never creates one)")
        keyring = Keyring.generate()
        write_key_file(path, keyring)
        return keyring


@dataclass
class KmsKeyProvider:
    """The keyring unwrapped by a KMS key: `wrapped` is the ciphertext of a master key (32+ random bytes) or
    of a keyring's JSON (`Keyring.to_json`, for several data keys during a rotation)."""

    key_name: str
    wrapped: bytes = field(repr=False)
    client: KmsClient = field(repr=False)

    def keyring(self) -> Keyring:
        try:
            plaintext = self.client.decrypt(self.key_name, self.wrapped)
        except ConfigError:
            raise
        except Exception as exc:  # the client library's errors: permission, not found, wrong key, network
            raise ConfigError(f"Cloud KMS could not unwrap the data key with CARECAST_KMS_KEY "
                              f"({type(exc).__name__})") from None
        if plaintext[:1] == b"{":
            try:
                return Keyring.from_json(plaintext.decode("utf-8"))
            except (UnicodeDecodeError, ConfigError):
                pass  # a random master key may start with "{" too
        if len(plaintext) < 32:
            raise ConfigError("the KMS-wrapped data key must unwrap to at least 32 bytes")
        return Keyring.from_master(plaintext)


def _wrapped_key(settings: Settings) -> bytes:
    """The wrapped data key: base64 text from CARECAST_DATA_KEY, else from the key file. Not secret by itself
    (useless without KMS), so the file's mode is not checked."""
    if settings.data_key:
        text, source = settings.data_key, "CARECAST_DATA_KEY"
    elif settings.key_file.exists():
        text, source = settings.key_file.read_text(encoding="ascii", errors="replace"), "the key file"
    else:
        raise KeyMissingError("CARECAST_KMS_KEY is set but there is no wrapped data key: set CARECAST_DATA_KEY "
                              "or CARECAST_KEY_FILE to the base64 of the KMS ciphertext")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source} is not valid base64 (with CARECAST_KMS_KEY it holds the wrapped key)") from None


def key_provider(settings: Settings, *, create: bool = True, kms_client: KmsClient | None = None) -> KeyProvider:
    """Cloud KMS when CARECAST_KMS_KEY is set (the real client only then imported), else the local keys."""
    if settings.kms_key:
        wrapped = _wrapped_key(settings)
        client = kms_client if kms_client is not None else GoogleCloudKms()
        return KmsKeyProvider(settings.kms_key, wrapped, client)
    return LocalKeyProvider(settings, create=create)


def wrap_data_key(client: KmsClient, key_name: str, plaintext: bytes) -> str:
    """The base64 ciphertext of a master key (or keyring JSON) under a KMS key: the value to store in
    CARECAST_DATA_KEY (or the key file) beside CARECAST_KMS_KEY."""
    return base64.b64encode(client.encrypt(key_name, plaintext)).decode("ascii")


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), the checksum Cloud KMS uses to detect corruption of requests and answers."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class GoogleCloudKms:
    """Cloud KMS through google-cloud-kms (an optional dependency), imported only when this is made.

    Both directions carry CRC32C checksums, as Google recommends: KMS checks what it receives, and an
    answer whose checksum does not match is refused here."""

    def __init__(self, client: Any = None) -> None:
        if client is None:
            try:
                from google.cloud import kms
            except ImportError:
                raise ConfigError("CARECAST_KMS_KEY is set but google-cloud-kms is not installed "
                                  "(pip install google-cloud-kms)") from None
            client = kms.KeyManagementServiceClient()
        self._client = client

    def encrypt(self, key_name: str, plaintext: bytes) -> bytes:
        response = self._client.encrypt(request={"name": key_name, "plaintext": plaintext,
                                                 "plaintext_crc32c": crc32c(plaintext)})
        if not response.verified_plaintext_crc32c or response.ciphertext_crc32c != crc32c(response.ciphertext):
            raise ConfigError("Cloud KMS encrypt: the request or the answer was corrupted in transit")
        return bytes(response.ciphertext)

    def decrypt(self, key_name: str, ciphertext: bytes) -> bytes:
        response = self._client.decrypt(request={"name": key_name, "ciphertext": ciphertext,
                                                 "ciphertext_crc32c": crc32c(ciphertext)})
        if response.plaintext_crc32c != crc32c(response.plaintext):
            raise ConfigError("Cloud KMS decrypt: the answer was corrupted in transit")
        return bytes(response.plaintext)
