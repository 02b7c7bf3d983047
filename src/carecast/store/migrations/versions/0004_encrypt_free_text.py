"""encrypt free text: condition displays and imaging descriptions

Free text can carry identifiers (a name typed into a study description), so it is kept like report
conclusions: encrypted with the data key, under the context "<table>.<column>". Rows stored before this
revision are encrypted in place, which needs the keyring: `carecast db upgrade` and the store's start-up
hand it in (`carecast.store.migrate.upgrade(engine, keyring=...)`); without it the migration refuses to
run over existing text rather than lose it.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (("conditions", "display"), ("imaging_studies", "description"), ("imaging_series", "description"))


def _keyring_for(conn: sa.Connection, table: str, column: str) -> object:
    keyring = context.config.attributes.get("keyring")
    if keyring is None:
        raise RuntimeError(f"migration 0004 encrypts {table}.{column}, which holds text: run it with the data "
                           "key (carecast db upgrade)")
    return keyring


def _move(table: str, source: str, target: str, convert: str) -> None:
    """Copy `source` into `target` through the keyring's `convert` ("encrypt" or "decrypt") for every row
    that has a value. Table and column names come from COLUMNS, never from input."""
    conn = op.get_bind()
    t = sa.table(table, sa.column("id"), sa.column(source), sa.column(target))
    rows = conn.execute(sa.select(t.c.id, t.c[source]).where(t.c[source].is_not(None))).all()
    if not rows:
        return
    keyring = _keyring_for(conn, table, source.removesuffix("_enc"))
    context_name = f"{table}.{source.removesuffix('_enc')}"
    step = getattr(keyring, convert)
    conn.execute(sa.update(t).where(t.c.id == sa.bindparam("rid")).values({target: sa.bindparam("value")}),
                 [{"rid": r[0], "value": step(r[1], context_name)} for r in rows])


def _check_key(columns: tuple[tuple[str, str], ...]) -> None:
    """Refuse before any change (SQLite runs DDL outside the transaction) when text needs the key."""
    conn = op.get_bind()
    for table, column in columns:
        t = sa.table(table, sa.column(column))
        if conn.execute(sa.select(t.c[column]).where(t.c[column].is_not(None)).limit(1)).first() is not None:
            _keyring_for(conn, table, column.removesuffix("_enc"))


def upgrade() -> None:
    _check_key(COLUMNS)
    for table, column in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(f"{column}_enc", sa.LargeBinary(), nullable=True))
        _move(table, column, f"{column}_enc", "encrypt")
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)


def downgrade() -> None:
    _check_key(tuple((table, f"{column}_enc") for table, column in COLUMNS))
    for table, column in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(column, sa.Text(), nullable=True))
        _move(table, f"{column}_enc", column, "decrypt")
        with op.batch_alter_table(table) as batch:
            batch.drop_column(f"{column}_enc")
