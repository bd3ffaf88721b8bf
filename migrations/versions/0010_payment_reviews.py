"""Payment reviews (why, and how they were decided) and the checks of receipts' claims.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 12:00:00+00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pk() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _amount() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite")


def _when() -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Adds `receipts.check_status` and the review and receipt-check tables."""
    with op.batch_alter_table("receipts") as batch:
        batch.add_column(sa.Column("check_status", sa.String(length=8), nullable=True))
    op.create_table(
        "payment_reviews",
        sa.Column("id", _pk(), autoincrement=True, nullable=False),
        sa.Column("provider_address", sa.String(length=42), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "open",
                "released",
                "voided",
                name="payment_review_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("opened_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.Column("decided_at", _when(), nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("reversed_receipts", sa.Integer(), nullable=True),
        sa.Column("reversed_amount", _amount(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_reviews")),
    )
    op.create_index(
        op.f("ix_payment_reviews_provider_address"),
        "payment_reviews",
        ["provider_address"],
        unique=False,
    )
    op.create_index(
        "uq_payment_reviews_open_provider",
        "payment_reviews",
        ["provider_address"],
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_table(
        "payment_review_reasons",
        sa.Column("id", _pk(), autoincrement=True, nullable=False),
        sa.Column("review_id", _pk(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("attestation_seq", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("check", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["review_id"],
            ["payment_reviews.id"],
            name=op.f("fk_payment_review_reasons_review_id_payment_reviews"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_review_reasons")),
    )
    op.create_index(
        op.f("ix_payment_review_reasons_review_id"),
        "payment_review_reasons",
        ["review_id"],
        unique=False,
    )
    op.create_table(
        "receipt_check_failures",
        sa.Column("id", _pk(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("check", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["receipts.job_id"],
            name=op.f("fk_receipt_check_failures_job_id_receipts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipt_check_failures")),
    )
    op.create_index(
        op.f("ix_receipt_check_failures_job_id"),
        "receipt_check_failures",
        ["job_id"],
        unique=False,
    )


def downgrade() -> None:
    """Drops them again."""
    op.drop_index(op.f("ix_receipt_check_failures_job_id"), table_name="receipt_check_failures")
    op.drop_table("receipt_check_failures")
    op.drop_index(op.f("ix_payment_review_reasons_review_id"), table_name="payment_review_reasons")
    op.drop_table("payment_review_reasons")
    op.drop_index("uq_payment_reviews_open_provider", table_name="payment_reviews")
    op.drop_index(op.f("ix_payment_reviews_provider_address"), table_name="payment_reviews")
    op.drop_table("payment_reviews")
    with op.batch_alter_table("receipts") as batch:
        batch.drop_column("check_status")
