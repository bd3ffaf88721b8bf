"""Per-API-key budgets (money, wall mWh, mg CO2) with running totals; the job's API key.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 12:00:00+00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _amount() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite")


def upgrade() -> None:
    """Adds the budget and spent columns to `api_keys` and `jobs.api_key_id`."""
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("budget_money", _amount(), nullable=True))
        batch.add_column(sa.Column("budget_wall_mwh", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("budget_gco2_mg", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("spent_money", _amount(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("spent_wall_mwh", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("spent_gco2_mg", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column(
                "api_key_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch.create_foreign_key(
            op.f("fk_jobs_api_key_id_api_keys"), "api_keys", ["api_key_id"], ["id"]
        )
        batch.create_index(op.f("ix_jobs_api_key_id"), ["api_key_id"], unique=False)


def downgrade() -> None:
    """Drops them again."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_api_key_id"))
        batch.drop_constraint(op.f("fk_jobs_api_key_id_api_keys"), type_="foreignkey")
        batch.drop_column("api_key_id")
    with op.batch_alter_table("api_keys") as batch:
        for name in (
            "spent_gco2_mg",
            "spent_wall_mwh",
            "spent_money",
            "budget_gco2_mg",
            "budget_wall_mwh",
            "budget_money",
        ):
            batch.drop_column(name)
