"""Nonces of signed buyer requests, kept until the request expires.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 10:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Creates the table."""
    op.create_table(
        "buyer_nonces",
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", "nonce", name=op.f("pk_buyer_nonces")),
    )
    op.create_index(
        op.f("ix_buyer_nonces_expires_at"), "buyer_nonces", ["expires_at"], unique=False
    )


def downgrade() -> None:
    """Drops the table."""
    op.drop_index(op.f("ix_buyer_nonces_expires_at"), table_name="buyer_nonces")
    op.drop_table("buyer_nonces")
