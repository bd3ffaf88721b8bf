"""`chain_reconciliations`: each check of the ledger against the contract.

The settlement worker compares, every few minutes, what the ledger says the contract holds
with what the contract holds at the last block the chain watcher booked
(`market.settlement.reconcile`); each result is kept here, for `/metrics` and the operator.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-23 10:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chain_reconciliations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("chain_epoch", sa.Integer(), nullable=False),
        sa.Column("ledger_epoch", sa.Integer(), nullable=False),
        sa.Column("accounts_compared", sa.Boolean(), nullable=False),
        sa.Column("differences", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_reconciliations")),
    )
    op.create_index(
        op.f("ix_chain_reconciliations_checked_at"), "chain_reconciliations", ["checked_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_chain_reconciliations_checked_at"), table_name="chain_reconciliations")
    op.drop_table("chain_reconciliations")
