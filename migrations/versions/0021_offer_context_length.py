"""`provider_offers.context_length`: the engine's context, as the agent read it.

The most tokens (prompt and completion together) the provider's engine serves in one
request: vLLM's `max_model_len`, which the agent reads from the engine's `GET /v1/models`
and sends in its registration. Routing skips offers too short for a request's explicit
completion limit, and `GET /v1/models` shows it. Offers registered before this revision,
and agents whose engine does not report it, have none (null): they are never skipped.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-25 10:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Adds the nullable column."""
    with op.batch_alter_table("provider_offers") as batch:
        batch.add_column(sa.Column("context_length", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drops it again."""
    with op.batch_alter_table("provider_offers") as batch:
        batch.drop_column("context_length")
