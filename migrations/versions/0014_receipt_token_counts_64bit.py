"""Receipt token counts as 64-bit integers, as the protocol allows them.

`receipts.prompt_tokens` and `completion_tokens` were 32-bit on PostgreSQL, so a receipt
with more than 2^31 - 1 tokens (which the protocol's safe-integer range allows; its charge
is capped by the hold anyway) failed to insert there, and the request ended in a server
error instead of being charged. SQLite's INTEGER is already 64-bit: only PostgreSQL's
columns change.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23 04:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("prompt_tokens", "completion_tokens")


def _retype(old: sa.types.TypeEngine[int], new: sa.types.TypeEngine[int]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for column in COLUMNS:
        op.alter_column("receipts", column, type_=new, existing_type=old, existing_nullable=False)


def upgrade() -> None:
    _retype(sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    _retype(sa.BigInteger(), sa.Integer())
