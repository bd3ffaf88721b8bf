"""Jobs name the API process serving them, so a process that stops leaves no hold behind.

`api_processes` holds one row per market API process, whose `heartbeat_at` it renews every
few seconds; `jobs.process_id` names the process that opened the job. A job still `routed`
whose process has not beaten for `MARKET_ORPHANED_JOB_AFTER_S` is failed and its hold
released (`market.jobs.orphans`). The partial index `ix_jobs_routed` holds only the routed
jobs, so that pass never reads the finished ones. Jobs from before this revision have no
process: one still routed (its process was replaced by the upgrade) is released once it
is older than the same bound.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23 06:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUTED = "status = 'routed'"


def upgrade() -> None:
    op.create_table(
        "api_processes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("jobs", sa.Column("process_id", sa.String(32), nullable=True))
    op.create_index(
        "ix_jobs_routed",
        "jobs",
        ["process_id"],
        sqlite_where=sa.text(ROUTED),
        postgresql_where=sa.text(ROUTED),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_routed", table_name="jobs")
    # A plain DROP COLUMN (SQLite 3.35+): a batch copy of `jobs` would drop the table that
    # receipts, holds and transfers reference, which SQLite's foreign keys refuse.
    op.drop_column("jobs", "process_id")
    op.drop_table("api_processes")
