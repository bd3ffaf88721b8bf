"""`ix_jobs_provider_address` goes: no query reads jobs by provider.

A provider's served work is read from `receipts` (`ix_receipts_provider_address`), and the
agent learns about a job it holds a receipt for by the job's id
(`POST /providers/receipts/status`). The index took an entry, and its pages' writes, on
every request.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-23 17:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_jobs_provider_address", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_provider_address", "jobs", ["provider_address"])
