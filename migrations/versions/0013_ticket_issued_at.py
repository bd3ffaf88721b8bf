"""Jobs keep when the market issued their ticket, for the receipt checks.

`jobs.ticket_issued_at_ms` is the job ticket's `issued_at` (unix ms, the market's clock).
The receipt-check pass reads it as the start of `receipt_power`'s interval and as the bound
`timing_order` tests the first token against; jobs from before this revision have none,
and their checks fall back to the job's `created_at` as before.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23 04:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("ticket_issued_at_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): a batch copy of `jobs` would drop the table that
    # receipts, holds and transfers reference, which SQLite's foreign keys refuse.
    op.drop_column("jobs", "ticket_issued_at_ms")
