"""`epochs.sent_*`: the settlement transaction an epoch waits on.

Each send of an epoch's `settleEpoch` (a replacement at higher fees included) is recorded on
the epoch as soon as the node accepts it, in its own transaction, before the wait for it to
be mined: its hash, nonce, `maxFeePerGas` and `maxPriorityFeePerGas` (wei) and when it was
sent. A submitted epoch thus names what it waits on in the mempool, after a crash too.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-24 10:00:00+00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _amount() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite")


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("sent_tx_hash", sa.String(66), nullable=True),
        sa.Column("sent_nonce", sa.BigInteger(), nullable=True),
        sa.Column("sent_max_fee_per_gas", _amount(), nullable=True),
        sa.Column("sent_max_priority_fee_per_gas", _amount(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    """Adds the columns of the last settlement transaction sent to `epochs`."""
    with op.batch_alter_table("epochs") as batch:
        for column in _columns():
            batch.add_column(column)


def downgrade() -> None:
    """Drops them again."""
    with op.batch_alter_table("epochs") as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
