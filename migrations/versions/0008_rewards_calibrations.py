"""Network-token rewards per epoch (reward lines, weights) and provider calibrations.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 12:00:00+00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pk() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _amount() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite")


def _kinds(values: str) -> None:
    """Replaces the check constraint of `epoch_lines.kind` (a non-native enum)."""
    name = op.f("ck_epoch_lines_epoch_line_kind")
    with op.batch_alter_table("epoch_lines") as batch:
        batch.drop_constraint(name, type_="check")
        batch.create_check_constraint(name, sa.text(f"kind IN ({values})"))


def upgrade() -> None:
    """Adds the reward line kind, the epoch's reward total and note, and two tables."""
    _kinds("'debit', 'credit', 'reward'")
    with op.batch_alter_table("epochs") as batch:
        batch.add_column(sa.Column("total_reward", _amount(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("reward_note", sa.String(length=300), nullable=True))
    op.create_table(
        "epoch_reward_weights",
        sa.Column("id", _pk(), autoincrement=True, nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("tokens_base", sa.BigInteger(), nullable=False),
        sa.Column("tokens_measured", sa.BigInteger(), nullable=False),
        sa.Column("joules_per_token", sa.String(length=32), nullable=True),
        sa.Column("multiplier_milli", sa.Integer(), nullable=False),
        sa.Column("weight", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("excluded", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["epoch"], ["epochs.number"], name=op.f("fk_epoch_reward_weights_epoch_epochs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_epoch_reward_weights")),
        sa.UniqueConstraint(
            "epoch", "address", "model", name=op.f("uq_epoch_reward_weights_epoch_address_model")
        ),
    )
    op.create_index(
        op.f("ix_epoch_reward_weights_epoch"), "epoch_reward_weights", ["epoch"], unique=False
    )
    op.create_table(
        "provider_calibrations",
        sa.Column("provider_address", sa.String(length=42), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("model_digest", sa.String(length=66), nullable=True),
        sa.Column("meter_method", sa.String(length=16), nullable=False),
        sa.Column("issued_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("levels", sa.Text(), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_address"],
            ["providers.address"],
            name=op.f("fk_provider_calibrations_provider_address_providers"),
        ),
        sa.PrimaryKeyConstraint("provider_address", name=op.f("pk_provider_calibrations")),
    )


def downgrade() -> None:
    """Drops them again (reward lines are deleted: the old constraint refuses them)."""
    op.drop_table("provider_calibrations")
    op.drop_index(op.f("ix_epoch_reward_weights_epoch"), table_name="epoch_reward_weights")
    op.drop_table("epoch_reward_weights")
    with op.batch_alter_table("epochs") as batch:
        batch.drop_column("reward_note")
        batch.drop_column("total_reward")
    op.execute("DELETE FROM epoch_lines WHERE kind = 'reward'")
    _kinds("'debit', 'credit'")
