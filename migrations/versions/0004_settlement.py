"""Epochs, their settlement lines, and the chain watcher's cursor.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 16:30:00+00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _amount() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates the tables."""
    op.create_table(
        "chain_cursors",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_chain_cursors")),
    )
    op.create_table(
        "epochs",
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "submitted",
                "settled",
                name="epoch_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("receipts_root", sa.String(length=66), nullable=False),
        sa.Column("receipt_count", sa.Integer(), nullable=False),
        sa.Column("total_debit", _amount(), nullable=False),
        sa.Column("total_credit", _amount(), nullable=False),
        sa.Column("fee", _amount(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("block", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("submitted_at", _time(), nullable=True),
        sa.Column("settled_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_epochs")),
    )
    op.create_index(op.f("ix_epochs_status"), "epochs", ["status"])
    op.create_table(
        "epoch_lines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "debit",
                "credit",
                name="epoch_line_kind",
                native_enum=False,
                create_constraint=True,
                length=8,
            ),
            nullable=False,
        ),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("amount", _amount(), nullable=False),
        sa.ForeignKeyConstraint(
            ["epoch"], ["epochs.number"], name=op.f("fk_epoch_lines_epoch_epochs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_epoch_lines")),
        sa.UniqueConstraint(
            "epoch", "kind", "address", name=op.f("uq_epoch_lines_epoch_kind_address")
        ),
    )
    op.create_index(op.f("ix_epoch_lines_epoch"), "epoch_lines", ["epoch"])


def downgrade() -> None:
    """Drops the tables."""
    op.drop_index(op.f("ix_epoch_lines_epoch"), table_name="epoch_lines")
    op.drop_table("epoch_lines")
    op.drop_index(op.f("ix_epochs_status"), table_name="epochs")
    op.drop_table("epochs")
    op.drop_table("chain_cursors")
