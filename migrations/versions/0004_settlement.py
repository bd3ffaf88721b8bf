"""Epochs, their settlement lines, and the chain watcher's cursor.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 16:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401 - used as the tables arrive
from alembic import op  # noqa: F401 - used as the tables arrive

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Creates the tables."""


def downgrade() -> None:
    """Drops the tables."""
