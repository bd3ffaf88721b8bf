"""Energy accounting: attestation checks, flagged attestations, the site of each receipt.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 09:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pk() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Creates the checks table; adds the attestation's model and flag, the receipt's site."""
    with op.batch_alter_table("provider_attestations") as batch:
        batch.add_column(sa.Column("model", sa.String(length=256), nullable=True))
        batch.add_column(
            sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("receipts") as batch:
        batch.add_column(sa.Column("energy_site", sa.Text(), nullable=True))
    op.create_table(
        "provider_attestation_checks",
        sa.Column("id", _pk(), autoincrement=True, nullable=False),
        sa.Column("attestation_id", _pk(), nullable=False),
        sa.Column("provider_address", sa.String(length=42), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("check", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["attestation_id"],
            ["provider_attestations.id"],
            name=op.f("fk_provider_attestation_checks_attestation_id_provider_attestations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_attestation_checks")),
    )
    op.create_index(
        op.f("ix_provider_attestation_checks_attestation_id"),
        "provider_attestation_checks",
        ["attestation_id"],
    )
    op.create_index(
        "ix_provider_attestation_checks_provider_seq",
        "provider_attestation_checks",
        ["provider_address", "seq"],
    )


def downgrade() -> None:
    """Drops what `upgrade` added."""
    op.drop_index(
        "ix_provider_attestation_checks_provider_seq", table_name="provider_attestation_checks"
    )
    op.drop_index(
        op.f("ix_provider_attestation_checks_attestation_id"),
        table_name="provider_attestation_checks",
    )
    op.drop_table("provider_attestation_checks")
    with op.batch_alter_table("receipts") as batch:
        batch.drop_column("energy_site")
    with op.batch_alter_table("provider_attestations") as batch:
        batch.drop_column("flagged")
        batch.drop_column("model")
