"""Jobs and the receipts providers sign for them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 16:30:00+00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _amount() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates the tables."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("buyer_address", sa.String(length=42), nullable=False),
        sa.Column("provider_address", sa.String(length=42), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "routed",
                "completed",
                "failed",
                name="job_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("hold_amount", _amount(), nullable=False),
        sa.Column("price_in_per_mtok", _amount(), nullable=False),
        sa.Column("price_out_per_mtok", _amount(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("finished_at", _time(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_buyer_address"), "jobs", ["buyer_address"])
    op.create_index(op.f("ix_jobs_provider_address"), "jobs", ["provider_address"])
    op.create_table(
        "receipts",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("provider_address", sa.String(length=42), nullable=False),
        sa.Column("buyer_address", sa.String(length=42), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("receipt_hash", sa.String(length=66), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("charge", _amount(), nullable=False),
        sa.Column("fee", _amount(), nullable=False),
        sa.Column("energy_method", sa.String(length=16), nullable=False),
        sa.Column("energy_mj", sa.BigInteger(), nullable=True),
        sa.Column("first_token_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("finished_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("verified_at", _time(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("leaf_index", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_receipts_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_receipts")),
        sa.UniqueConstraint("receipt_hash", name=op.f("uq_receipts_receipt_hash")),
    )
    op.create_index(op.f("ix_receipts_provider_address"), "receipts", ["provider_address"])
    op.create_index("ix_receipts_unsettled", "receipts", ["epoch", "buyer_address"])


def downgrade() -> None:
    """Drops the tables."""
    op.drop_index("ix_receipts_unsettled", table_name="receipts")
    op.drop_index(op.f("ix_receipts_provider_address"), table_name="receipts")
    op.drop_table("receipts")
    op.drop_index(op.f("ix_jobs_provider_address"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_buyer_address"), table_name="jobs")
    op.drop_table("jobs")
