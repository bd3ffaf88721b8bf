"""Receipts not checked yet: a partial index, so each receipt-check round reads only them.

`market.reviews.receipts.check_receipts` takes the receipts in no epoch whose
`check_status` is null, in job-id order, a chunk at a time. Without this index both
databases read every receipt in no epoch and sorted them for each chunk (100k receipts: about
a minute); with it a chunk is a range of an index that holds only the unchecked receipts,
and a receipt leaves it once checked or settled. The two columns that are null in every
entry lead, so that SQLite's planner takes it (three equality or range terms) over
`ix_receipts_unsettled` (one).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22 23:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNCHECKED = "epoch IS NULL AND check_status IS NULL"


def upgrade() -> None:
    op.create_index(
        "ix_receipts_unchecked",
        "receipts",
        ["epoch", "check_status", "job_id"],
        sqlite_where=sa.text(UNCHECKED),
        postgresql_where=sa.text(UNCHECKED),
    )


def downgrade() -> None:
    op.drop_index("ix_receipts_unchecked", table_name="receipts")
