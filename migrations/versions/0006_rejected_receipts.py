"""Receipts that failed verification, kept with the reason they were refused.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 17:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Creates the table."""
    op.create_table(
        "rejected_receipts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("provider_address", sa.String(length=42), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("message", sa.String(length=500), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_rejected_receipts_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_receipts")),
    )
    op.create_index(op.f("ix_rejected_receipts_job_id"), "rejected_receipts", ["job_id"])
    op.create_index(
        op.f("ix_rejected_receipts_provider_address"), "rejected_receipts", ["provider_address"]
    )


def downgrade() -> None:
    """Drops the table."""
    op.drop_index(op.f("ix_rejected_receipts_provider_address"), table_name="rejected_receipts")
    op.drop_index(op.f("ix_rejected_receipts_job_id"), table_name="rejected_receipts")
    op.drop_table("rejected_receipts")
