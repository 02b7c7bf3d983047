"""Re-encryption of every encrypted column under the keyring's active data key (for `carecast keys rotate`).

Encrypted columns are found from the schema (every `*_enc` binary column), so a column added later is
rotated too. Each batch commits on its own, and a row is rewritten only if it still holds the token that
was read (a concurrent update wins), so an interrupted run resumes where it stopped: values already under
the active key are skipped. Blind indexes, record keys and content hashes use the separate index key,
which rotation keeps, so none of them changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Column, Engine, LargeBinary, Table, select, update

from carecast.crypto import Keyring
from carecast.store import schema as S

# Columns whose encryption context is not "<table>.<column without _enc>".
_CONTEXTS = {("ingest_records", "raw_enc"): "ingest.raw"}


@dataclass(frozen=True)
class EncryptedColumn:
    table: Table
    column: Column
    context: str

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column.name}"


def encrypted_columns() -> list[EncryptedColumn]:
    """Every AES-GCM column of the schema with its encryption context."""
    out = []
    for table in S.Base.metadata.sorted_tables:
        for col in table.columns:
            if col.name.endswith("_enc") and isinstance(col.type, LargeBinary):
                context = _CONTEXTS.get((table.name, col.name), f"{table.name}.{col.name.removesuffix('_enc')}")
                out.append(EncryptedColumn(table, col, context))
    return out


def _tokens(engine: Engine, ec: EncryptedColumn, batch: int) -> Iterator[list[tuple[int, bytes]]]:
    """(row id, token) of non-null values, in id order, a batch at a time (keyset pagination)."""
    pk = ec.table.c.id
    last = None
    while True:
        stmt = select(pk, ec.column).where(ec.column.is_not(None)).order_by(pk).limit(batch)
        if last is not None:
            stmt = stmt.where(pk > last)
        with engine.connect() as conn:
            rows = [(int(r[0]), bytes(r[1])) for r in conn.execute(stmt)]
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def key_usage(engine: Engine, batch: int = 2000) -> dict[str, Counter[str]]:
    """For each encrypted column, how many values each key id made."""
    usage: dict[str, Counter[str]] = {}
    for ec in encrypted_columns():
        counts: Counter[str] = Counter()
        for rows in _tokens(engine, ec, batch):
            counts.update(Keyring.key_id_of(tok) for _, tok in rows)
        usage[ec.name] = counts
    return usage


@dataclass
class ReencryptResult:
    rewritten: dict[str, int] = field(default_factory=dict)  # column -> values re-encrypted
    already_current: dict[str, int] = field(default_factory=dict)  # column -> values already under the active key

    @property
    def total(self) -> int:
        return sum(self.rewritten.values())


def reencrypt_all(engine: Engine, keyring: Keyring, *, batch: int = 500,
                  progress: Callable[[str], None] | None = None) -> ReencryptResult:
    """Re-encrypt every value not made by the active key. A value that fails to decrypt stops the run with
    `DecryptionError` (naming the column, never the value); batches committed before stay committed."""
    result = ReencryptResult()
    active = keyring.active_id
    for ec in encrypted_columns():
        done = current = 0
        pk = ec.table.c.id
        for rows in _tokens(engine, ec, batch):
            stale = [(rid, tok) for rid, tok in rows if Keyring.key_id_of(tok) != active]
            current += len(rows) - len(stale)
            if not stale:
                continue
            with engine.begin() as conn:
                for rid, tok in stale:
                    fresh = keyring.encrypt(keyring.decrypt(tok, ec.context), ec.context)
                    conn.execute(update(ec.table).where(pk == rid, ec.column == tok).values({ec.column.name: fresh}))
            done += len(stale)
        result.rewritten[ec.name] = done
        result.already_current[ec.name] = current
        if progress is not None and done:
            progress(f"{ec.name}: {done} value(s) re-encrypted")
    return result
