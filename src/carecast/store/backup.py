"""Backups of a CareCast installation and their restore: the database, the model registry and the keyring.

A backup is one tar file (mode 0600) holding:
- `database.sqlite` (SQLite's online backup API: a consistent copy while writers run) or `database.pgdump`
  (`pg_dump --format=custom` of the schema in use);
- `models/`, the model registry directory (when it is a local directory);
- `keyring.sealed`, the key file sealed with a passphrase (scrypt, then AES-256-GCM), or `keyring.wrapped`
  when the key file holds a Cloud KMS-wrapped key (useless without KMS), or nothing with `include_keyring=False`
  or when the key comes from CARECAST_DATA_KEY (then it lives in the secret manager, not here);
- `manifest.json`: when, the backend, the migration revision, the row count and a content hash of every
  table, and the sha256 of every other member. Restore checks the member hashes before touching anything,
  and the table hashes after.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import Connection, Engine, MetaData, select, text

from carecast.config import Settings
from carecast.crypto import Keyring, write_key_file, write_private_file
from carecast.errors import ConfigError, InputError
from carecast.store.migrate import current_revision

FORMAT = "carecast-backup"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_SEAL_AAD = b"carecast backup keyring v1"
MIN_PASSPHRASE = 12


class BackupError(InputError):
    """A backup cannot be made or restored (a missing tool, a damaged file, a wrong passphrase)."""


# -- table fingerprints ------------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    if value is None:
        return "\x00"
    if isinstance(value, bytes | bytearray | memoryview):
        return "b:" + bytes(value).hex()
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return "t:" + aware.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return "d:" + value.isoformat()
    if isinstance(value, float | Decimal):
        return "f:" + repr(float(value))
    if isinstance(value, bool):
        return "B:" + str(int(value))
    return type(value).__name__[:1] + ":" + str(value)


def table_fingerprints(bind: Engine | Connection) -> dict[str, dict[str, Any]]:
    """Row count and SHA-256 over every row (in primary-key order) of every table of the database's schema.
    Given a connection, read within its transaction (and so its snapshot)."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return table_fingerprints(conn)
    meta = MetaData()
    meta.reflect(bind=bind)
    out: dict[str, dict[str, Any]] = {}
    for table in sorted(meta.tables.values(), key=lambda t: t.name):
        order = list(table.primary_key.columns) or list(table.columns)
        digest = hashlib.sha256()
        rows = 0
        for row in bind.execute(select(table).order_by(*order)).yield_per(2000):
            digest.update("\x1f".join(_canonical(v) for v in row).encode("utf-8") + b"\x1e")
            rows += 1
        out[table.name] = {"rows": rows, "sha256": digest.hexdigest()}
    return out


# -- keyring sealing ---------------------------------------------------------------------------------------------


def _seal_key(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, **_SCRYPT).derive(passphrase.encode("utf-8"))


def seal(plaintext: bytes, passphrase: str) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise ConfigError(f"the backup passphrase must have at least {MIN_PASSPHRASE} characters")
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(_seal_key(passphrase, salt)).encrypt(nonce, plaintext, _SEAL_AAD)
    return json.dumps({"kdf": "scrypt", **_SCRYPT, "salt": base64.b64encode(salt).decode(),
                       "nonce": base64.b64encode(nonce).decode(),
                       "ciphertext": base64.b64encode(sealed).decode()}).encode()


def unseal(blob: bytes, passphrase: str) -> bytes:
    try:
        doc = json.loads(blob)
        key = _seal_key(passphrase, base64.b64decode(doc["salt"]))
        return AESGCM(key).decrypt(base64.b64decode(doc["nonce"]), base64.b64decode(doc["ciphertext"]), _SEAL_AAD)
    except InvalidTag:
        raise BackupError("the passphrase does not open the backup's keyring") from None
    except (ValueError, KeyError, TypeError):
        raise BackupError("the backup's keyring is damaged") from None


# -- database copies ---------------------------------------------------------------------------------------------


def _sqlite_path(engine: Engine) -> Path:
    db = engine.url.database
    if not db or db == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up")
    return Path(db)


def _sqlite_copy(src: Path, dst: Path) -> None:
    """SQLite's online backup API: a consistent snapshot even while other connections write."""
    source = sqlite3.connect(src)
    target = sqlite3.connect(dst)
    try:
        with target:
            source.backup(target)
    finally:
        target.close()
        source.close()


def _pg_env(engine: Engine) -> dict[str, str]:
    """libpq settings for pg_dump/pg_restore; the password travels in the environment, never in argv."""
    url = engine.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGHOST": url.host or "127.0.0.1", "PGPORT": str(url.port or 5432),
                "PGUSER": url.username or "postgres", "PGDATABASE": url.database or "postgres"})
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return env


def current_schema(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT current_schema()")).scalar_one())


def _run(cmd: list[str], env: dict[str, str], what: str) -> subprocess.CompletedProcess[bytes]:
    if shutil.which(cmd[0]) is None:
        raise BackupError(f"{cmd[0]} is not installed (needed to {what})")
    done = subprocess.run(cmd, env=env, capture_output=True, check=False)  # noqa: S603 (fixed argv, no shell)
    if done.returncode != 0:
        # pg_* messages name objects, not row values; keep the last line for the operator.
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no message)"]
        raise BackupError(f"{cmd[0]} failed to {what}: {tail[0][:300]}")
    return done


def _pg_dump(engine: Engine, dst: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """Dump the schema in use and fingerprint its tables from one snapshot: writes landing meanwhile (every
    API request appends an audit row) are in neither, so the fingerprints describe exactly the dump."""
    schema = current_schema(engine)
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
        _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
              f"--schema={schema}", f"--file={dst}"], _pg_env(engine), "dump the database")
        return schema, table_fingerprints(conn)


def _pg_restore(engine: Engine, dump: Path, schema: str) -> None:
    """Empty the schema (its tables, views, sequences and types), then restore the dump into it in one
    transaction. The schema itself is kept (with its grants); the dump's CREATE SCHEMA entry is skipped."""
    if current_schema(engine) != schema:
        raise BackupError("the backup is of another PostgreSQL schema than the one in use")
    env = _pg_env(engine)
    listing = _run(["pg_restore", "--list", str(dump)], env, "read the dump").stdout.decode("utf-8", "replace")
    keep = [line for line in listing.splitlines() if " SCHEMA - " not in line and "COMMENT - SCHEMA" not in line]
    with engine.begin() as conn:
        q = text("SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE n.nspname = :s AND c.relkind IN ('r', 'p', 'v', 'm', 'S')")
        kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}
        for name, kind in conn.execute(q, {"s": schema}).all():
            conn.execute(text(f'DROP {kinds[kind]} IF EXISTS "{schema}"."{name}" CASCADE'))
        types = text("SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                     "WHERE n.nspname = :s AND t.typtype IN ('e', 'd')")
        for (name,) in conn.execute(types, {"s": schema}).all():
            conn.execute(text(f'DROP TYPE IF EXISTS "{schema}"."{name}" CASCADE'))
    with tempfile.TemporaryDirectory() as tmp:
        list_file = Path(tmp) / "toc.list"
        list_file.write_text("\n".join(keep) + "\n", encoding="utf-8")
        _run(["pg_restore", "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error",
              f"--use-list={list_file}", f"--dbname={env['PGDATABASE']}", str(dump)], env, "restore the database")


# -- create / restore --------------------------------------------------------------------------------------------


@dataclass
class BackupInfo:
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_registry(settings: Settings) -> Path | None:
    reg = settings.model_registry
    return None if "://" in reg else Path(reg)


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def keyring_needs_seal(settings: Settings, include_keyring: bool = True) -> bool:
    """Whether a backup will hold the key file sealed by a passphrase (see _stage_keyring): not when it is
    left out, when the key comes from CARECAST_DATA_KEY, when Cloud KMS wraps it, or when there is none."""
    return (include_keyring and not settings.data_key and not settings.kms_key and settings.key_file.exists())


def create_backup(settings: Settings, engine: Engine, out: Path, *, passphrase: str | None = None,
                  include_keyring: bool = True) -> BackupInfo:
    """Write a backup of the database, the model registry and (sealed) the keyring to the file `out`."""
    if out.exists():
        raise BackupError("the backup file already exists; choose a new name")
    if keyring_needs_seal(settings, include_keyring) and passphrase is None:
        raise ConfigError("a backup that holds the keyring needs a passphrase (or leave the keyring out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    backend = engine.dialect.name
    manifest: dict[str, Any] = {"format": FORMAT, "version": 1, "created_at": datetime.now(UTC).isoformat(),
                                "backend": backend, "revision": current_revision(engine), "members": {}}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".carecast-backup-") as tmp:
        stage = Path(tmp)
        os.chmod(stage, 0o700)
        # The fingerprints describe the copy itself (restore checks its result against them).
        if backend == "sqlite":
            _sqlite_copy(_sqlite_path(engine), stage / "database.sqlite")
            manifest["tables"] = _sqlite_copy_fingerprints(stage)
        elif backend == "postgresql":
            manifest["schema"], manifest["tables"] = _pg_dump(engine, stage / "database.pgdump")
        else:
            raise BackupError(f"backups of {backend} databases are not supported")
        registry = _local_registry(settings)
        if registry is not None and registry.is_dir():
            shutil.copytree(registry, stage / "models", symlinks=False)
            manifest["models"] = str(registry)
        manifest["keyring"] = _stage_keyring(settings, stage, passphrase, include_keyring)
        for path in _files(stage):
            manifest["members"][path.relative_to(stage).as_posix()] = _sha256(path)
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w") as tar:
            tar.add(stage / "manifest.json", arcname="manifest.json")
            for rel in manifest["members"]:
                tar.add(stage / rel, arcname=rel)
    return BackupInfo(path=out, manifest=manifest)


def _sqlite_copy_fingerprints(stage: Path) -> dict[str, dict[str, Any]]:
    from carecast.store.db import make_engine

    copy = make_engine(f"sqlite:///{stage / 'database.sqlite'}")
    try:
        return table_fingerprints(copy)
    finally:
        copy.dispose()
        for extra in ("database.sqlite-wal", "database.sqlite-shm"):
            (stage / extra).unlink(missing_ok=True)


def _stage_keyring(settings: Settings, stage: Path, passphrase: str | None, include: bool) -> str:
    if not include:
        return "not included"
    if settings.data_key and not settings.kms_key:
        return "not included: the key comes from CARECAST_DATA_KEY (keep it in the secret manager)"
    if not settings.key_file.exists():
        return "not included: no key file"
    raw = settings.key_file.read_bytes()
    if settings.kms_key:
        (stage / "keyring.wrapped").write_bytes(raw)
        return "wrapped by Cloud KMS (keyring.wrapped)"
    assert passphrase is not None  # keyring_needs_seal, checked by create_backup
    Keyring.from_json(raw.decode("utf-8"))  # refuse to back up a damaged key file
    (stage / "keyring.sealed").write_bytes(seal(raw, passphrase))
    return "sealed with the backup passphrase (keyring.sealed)"


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        with tarfile.open(path, mode="r") as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            manifest: dict[str, Any] = json.loads(member.read())
    except (tarfile.TarError, KeyError, ValueError, OSError):
        raise BackupError("not a CareCast backup (no readable manifest)") from None
    if manifest.get("format") != FORMAT:
        raise BackupError("not a CareCast backup")
    return manifest


def _extract(path: Path, manifest: dict[str, Any], dest: Path) -> None:
    """Extract only the members the manifest names, each checked against its sha256."""
    with tarfile.open(path, mode="r") as tar:
        for rel, digest in manifest["members"].items():
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise BackupError("the backup names a member outside itself")
            member = tar.extractfile(rel)
            if member is None:
                raise BackupError(f"the backup lacks its member {rel}")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as fh:
                shutil.copyfileobj(member, fh)
            if _sha256(target) != digest:
                raise BackupError(f"the backup's member {rel} is damaged (sha256 mismatch)")


@dataclass
class RestoreResult:
    tables: dict[str, dict[str, Any]]
    keyring: str
    models: str


def restore_backup(settings: Settings, engine: Engine, path: Path, *, passphrase: str | None = None,
                   restore_keyring: bool = True) -> RestoreResult:
    """Replace the database (and the model registry and key file, when the backup holds them) with the
    backup's, then check that every table's row count and content hash equal the backup's."""
    manifest = read_manifest(path)
    backend = engine.dialect.name
    if manifest["backend"] != backend:
        raise BackupError(f"the backup is of a {manifest['backend']} database, not {backend}")
    out_dir = path.parent
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".carecast-restore-") as tmp:
        stage = Path(tmp)
        os.chmod(stage, 0o700)
        _extract(path, manifest, stage)
        keyring_raw = None
        if restore_keyring and (stage / "keyring.sealed").exists():
            if passphrase is None:
                raise ConfigError("the backup holds a sealed keyring: give its passphrase (or skip the keyring)")
            keyring_raw = unseal((stage / "keyring.sealed").read_bytes(), passphrase)
        elif restore_keyring and (stage / "keyring.wrapped").exists():
            keyring_raw = (stage / "keyring.wrapped").read_bytes()
        engine.dispose()
        if backend == "sqlite":
            _sqlite_copy(stage / "database.sqlite", _sqlite_path(engine))
        else:
            _pg_restore(engine, stage / "database.pgdump", str(manifest.get("schema")))
        engine.dispose()  # pooled connections may hold the old schema's catalogue
        models = "not in the backup"
        registry = _local_registry(settings)
        if (stage / "models").is_dir() and registry is not None:
            _swap_dir(stage / "models", registry)
            models = f"restored to {registry}"
        keyring = "not restored"
        if keyring_raw is not None:
            keyring = _install_keyring(settings, keyring_raw, wrapped=(stage / "keyring.wrapped").exists())
    found = table_fingerprints(engine)
    if found != manifest["tables"]:
        bad = sorted(n for n in set(found) | set(manifest["tables"]) if found.get(n) != manifest["tables"].get(n))
        raise BackupError(f"the restored database differs from the backup in table(s) {', '.join(bad)}")
    return RestoreResult(tables=found, keyring=keyring, models=models)


def _swap_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`; an existing directory there is kept beside it, renamed, not deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target.rename(target.with_name(f"{target.name}.replaced-{stamp}"))
    shutil.copytree(new, target)


def _install_keyring(settings: Settings, raw: bytes, *, wrapped: bool) -> str:
    path = settings.key_file
    if path.exists() and path.read_bytes() == raw:
        return f"unchanged ({path})"
    moved = ""
    if path.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{path.name}.replaced-{stamp}")
        path.rename(aside)
        os.chmod(aside, 0o600)
        moved = f"; the previous key file was kept as {aside.name} (mode 0600)"
    if wrapped:
        write_private_file(path, raw)
    else:
        write_key_file(path, Keyring.from_json(raw.decode("utf-8")))
    return f"restored to {path}{moved}"


def describe(manifest: dict[str, Any]) -> str:
    """A short human summary of a backup manifest (no data)."""
    buf = io.StringIO()
    tables = manifest.get("tables", {})
    buf.write(f"{manifest.get('backend')} backup of {manifest.get('created_at')}, revision {manifest.get('revision')}"
              f", {len(tables)} tables, {sum(t['rows'] for t in tables.values())} rows; keyring: "
              f"{manifest.get('keyring')}")
    return buf.getvalue()
