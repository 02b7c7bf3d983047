"""audit spool: how far each process's audit spool file has been shipped into audit_events

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


def downgrade() -> None:
    op.drop_table("audit_spool")
