"""A buyer's job history in one index range: `ix_jobs_buyer_address` becomes
`ix_jobs_buyer_created` (`buyer_address`, `created_at`, `id`).

`GET /jobs` lists a buyer's jobs newest first and pages back from a job; with the buyer
alone in the index, each page sorted every job the buyer ever sent. The new index holds the
same rows, one entry per job as before, in the order the page reads them.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-23 15:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_buyer_created", "jobs", ["buyer_address", "created_at", "id"])
    op.drop_index("ix_jobs_buyer_address", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_buyer_address", "jobs", ["buyer_address"])
    op.drop_index("ix_jobs_buyer_created", table_name="jobs")
