"""Data-key rotation (`carecast keys rotate`): a new data key, every encrypted value re-encrypted under it,
the old key retired.

The order makes every step safe to interrupt, and a second run resumes the first (resumable, not
all-or-nothing):
1. a backup of the database, the model registry and the (sealed) keyring as they were;
2. the key file rewritten with a new active key and the old one marked retired, still able to decrypt,
   before anything is encrypted with the new key, so every stored value stays readable at every moment;
3. every value not under the active key re-encrypted, batch by batch (each batch commits);
4. a check that no value is left under a retired key; only then is the retired key's material dropped
   from the key file (its id stays, marked retired with the time).
A run that finds retired keys whose material is still in the keyring resumes at step 3.

The blind-index key is kept: MRN and serial indexes could be recomputed from the encrypted values, but
record keys and content hashes are keyed hashes of source data that is not stored, so it cannot change.
Writers must be stopped during a rotation (a process holding the old keyring would keep writing under the
retired key and could not read the new one); step 4 refuses to finish if one did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from carecast.config import Settings
from carecast.crypto import (
    GoogleCloudKms,
    Keyring,
    KmsClient,
    load_keyring,
    wrap_data_key,
    write_key_file,
    write_private_file,
)
from carecast.errors import CareCastError, ConfigError
from carecast.store import Store
from carecast.store.backup import create_backup
from carecast.store.keys import key_usage, reencrypt_all


class RotationIncompleteError(CareCastError):
    """Values are still under a retired key after re-encryption; the retired key is kept."""


@dataclass
class RotationReport:
    new_key: str
    retired: list[str]
    resumed: bool
    backup: Path | None
    reencrypted: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"active_key": self.new_key, "retired_keys": self.retired, "resumed": self.resumed,
                "backup": str(self.backup) if self.backup else None,
                "reencrypted": {k: v for k, v in self.reencrypted.items() if v},
                "reencrypted_total": sum(self.reencrypted.values())}


def check_rotatable(settings: Settings) -> None:
    """Rotation rewrites the key file: the keyring must come from one."""
    if settings.data_key:
        raise ConfigError("keys rotate rewrites the key file, but the key comes from CARECAST_DATA_KEY: move it to "
                          "a key file (CARECAST_KEY_FILE) first, or rotate the secret by hand")
    if not settings.key_file.exists():
        raise ConfigError("keys rotate needs the key file (CARECAST_KEY_FILE), which does not exist")


def save_keyring(settings: Settings, keyring: Keyring, kms_client: KmsClient | None = None) -> None:
    """Write the keyring to the key file (mode 0600): as JSON, or wrapped by Cloud KMS when CARECAST_KMS_KEY
    is set (the key file then holds the base64 KMS ciphertext of the keyring's JSON)."""
    if not settings.kms_key:
        write_key_file(settings.key_file, keyring)
        return
    client = kms_client if kms_client is not None else GoogleCloudKms()
    wrapped = wrap_data_key(client, settings.kms_key, keyring.to_json().encode("utf-8"))
    write_private_file(settings.key_file, (wrapped + "\n").encode("ascii"))


def rotate_keys(settings: Settings, store: Store, *, backup_path: Path | None, passphrase: str | None = None,
                include_keyring: bool = True, kms_client: KmsClient | None = None, batch: int = 500,
                progress: Callable[[str], None] | None = None) -> RotationReport:
    """Rotate the data key of `store` (whose keyring is replaced by the new one on success).

    `backup_path` is where the backup of step 1 goes (None only when resuming: no new backup is taken then).
    """
    check_rotatable(settings)
    say = progress or (lambda _msg: None)
    keyring = load_keyring(settings, create=False, kms_client=kms_client)
    resumed = bool(keyring.retiring)
    backup = None
    if resumed:
        say(f"resuming an unfinished rotation: {len(keyring.retiring)} retired key(s) still hold data")
        current = keyring
    else:
        if backup_path is None:
            raise ConfigError("a rotation takes a backup first: give where to write it")
        say("backing up the database, the model registry and the keyring")
        backup = create_backup(settings, store.engine, backup_path, passphrase=passphrase,
                               include_keyring=include_keyring).path
        current = keyring.rotated(datetime.now(UTC).isoformat(timespec="seconds"))
        save_keyring(settings, current, kms_client)  # before any value is written under the new key
        say(f"new data key {current.active_id} active; {keyring.active_id} retired")
    store.keyring = current
    done = reencrypt_all(store.engine, current, batch=batch, progress=say)
    left = {col: n for col, counts in key_usage(store.engine).items()
            if (n := sum(c for kid, c in counts.items() if kid != current.active_id))}
    if left:
        raise RotationIncompleteError(
            f"{sum(left.values())} value(s) in {', '.join(sorted(left))} are still under another key (was a writer "
            "running?): stop every CareCast process and run `carecast keys rotate` again to finish")
    retiring = current.retiring
    final = current.without_retired_material()
    save_keyring(settings, final, kms_client)
    store.keyring = final
    say(f"retired key material dropped: {', '.join(retiring) or '(none)'}")
    return RotationReport(new_key=final.active_id, retired=retiring, resumed=resumed, backup=backup,
                          reencrypted=done.rewritten)
