"""Queries on the jobs tables. No business rules here: the service decides, this fetches."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from market.jobs.models import Job, Receipt, RejectedReceipt


class JobRepository:
    """Reads and writes of jobs and receipts within the caller's session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add_job(self, job: Job) -> Job:
        """Adds a job row (flushed with the rest of the transaction)."""
        self.session.add(job)
        return job

    def get_job(self, job_id: str) -> Job | None:
        """The job with this id, if any."""
        return self.session.get(Job, job_id)

    def add_receipt(self, receipt: Receipt) -> Receipt:
        """Adds a verified receipt row."""
        self.session.add(receipt)
        return receipt

    def get_receipt(self, job_id: str) -> Receipt | None:
        """The verified receipt of a job, if any."""
        return self.session.scalars(select(Receipt).where(Receipt.job_id == job_id)).first()

    def rejected_receipts(self, job_id: str) -> list[RejectedReceipt]:
        """Refused receipts of a job, oldest first."""
        query = (
            select(RejectedReceipt)
            .where(RejectedReceipt.job_id == job_id)
            .order_by(RejectedReceipt.id)
        )
        return list(self.session.scalars(query))
