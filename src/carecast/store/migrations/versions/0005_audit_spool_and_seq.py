"""audit spool and chain position: how far each process's audit spool file has been shipped into
audit_events; each audit row's place in the chain (seq) guards its linearity instead of UNIQUE hashes

Rows stored before this revision take their id as their place (ids rise in chain order). The UNIQUE
constraints on prev_hash and hash go: seq's UNIQUE does their work at the end of one index, instead of at a
random page of each of two. On SQLite the table is rebuilt (Alembic batch mode).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_spool",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("shipped", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_spool")),
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute("UPDATE audit_events SET seq = id")
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch.drop_constraint("uq_audit_events_prev_hash", type_="unique")
        batch.drop_constraint("uq_audit_events_hash", type_="unique")
        batch.create_unique_constraint(batch.f("uq_audit_events_seq"), ["seq"])


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_seq", type_="unique")
        batch.create_unique_constraint(batch.f("uq_audit_events_prev_hash"), ["prev_hash"])
        batch.create_unique_constraint(batch.f("uq_audit_events_hash"), ["hash"])
        batch.drop_column("seq")
    op.drop_table("audit_spool")
