"""Providers, offers, heartbeats and attestations.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 16:30:00+00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pk() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _amount() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates the tables."""
    op.create_table(
        "providers",
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("public_key", sa.String(length=66), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "active",
                "suspended",
                name="provider_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("reputation", sa.Integer(), nullable=False),
        sa.Column("registered_at", _time(), nullable=False),
        sa.Column("registration_issued_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_heartbeat_at", _time(), nullable=True),
        sa.Column("heartbeat_issued_at_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_providers")),
    )
    op.create_index(op.f("ix_providers_last_heartbeat_at"), "providers", ["last_heartbeat_at"])

    op.create_table(
        "provider_offers",
        sa.Column("id", _pk(), nullable=False),
        sa.Column("provider_address", sa.String(length=42), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("model_digest", sa.String(length=66), nullable=True),
        sa.Column("quantization", sa.String(length=32), nullable=True),
        sa.Column("price_in_per_mtok", _amount(), nullable=False),
        sa.Column("price_out_per_mtok", _amount(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(length=16), nullable=True),
        sa.Column("tariff_micro_per_kwh", sa.BigInteger(), nullable=True),
        sa.Column("tariff_currency", sa.String(length=3), nullable=True),
        sa.Column("pue_profile", sa.String(length=32), nullable=False),
        sa.Column("pue_milli", sa.Integer(), nullable=False),
        sa.Column("host_overhead_milli", sa.Integer(), nullable=False),
        sa.Column("gpu", sa.String(length=128), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("declared_power_mw", sa.BigInteger(), nullable=True),
        sa.Column("job_url", sa.String(length=512), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_address"],
            ["providers.address"],
            name=op.f("fk_provider_offers_provider_address_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_offers")),
        sa.UniqueConstraint(
            "provider_address", "model", name=op.f("uq_provider_offers_provider_address_model")
        ),
    )
    op.create_index(
        op.f("ix_provider_offers_provider_address"), "provider_offers", ["provider_address"]
    )

    op.create_table(
        "provider_attestations",
        sa.Column("id", _pk(), nullable=False),
        sa.Column("provider_address", sa.String(length=42), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=66), nullable=False),
        sa.Column("prev_hash", sa.String(length=66), nullable=False),
        sa.Column("window_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("window_end_ms", sa.BigInteger(), nullable=False),
        sa.Column("energy_method", sa.String(length=16), nullable=False),
        sa.Column("energy_mj", sa.BigInteger(), nullable=True),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("generation_tokens", sa.BigInteger(), nullable=False),
        sa.Column("avg_power_mw", sa.BigInteger(), nullable=True),
        sa.Column("power_limit_mw", sa.BigInteger(), nullable=True),
        sa.Column("avg_running_milli", sa.BigInteger(), nullable=False),
        sa.Column("avg_waiting_milli", sa.BigInteger(), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("received_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_address"],
            ["providers.address"],
            name=op.f("fk_provider_attestations_provider_address_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_attestations")),
        sa.UniqueConstraint(
            "provider_address", "seq", name=op.f("uq_provider_attestations_provider_address_seq")
        ),
    )
    op.create_index(
        op.f("ix_provider_attestations_window_end_ms"), "provider_attestations", ["window_end_ms"]
    )


def downgrade() -> None:
    """Drops the tables."""
    op.drop_index(
        op.f("ix_provider_attestations_window_end_ms"), table_name="provider_attestations"
    )
    op.drop_table("provider_attestations")
    op.drop_index(op.f("ix_provider_offers_provider_address"), table_name="provider_offers")
    op.drop_table("provider_offers")
    op.drop_index(op.f("ix_providers_last_heartbeat_at"), table_name="providers")
    op.drop_table("providers")
