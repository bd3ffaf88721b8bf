"""Queries on the jobs tables. No business rules here: the service decides, this fetches."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from market.jobs.models import EnergySite, Job, JobStatus, Receipt, RejectedReceipt
from market.ledger.repository import expire
from market.prepared import Prepared

_JOBS = cast(Table, Job.__table__)
_RECEIPTS = cast(Table, Receipt.__table__)
_INSERT_JOB = Prepared(_JOBS.insert())
_INSERT_RECEIPT = Prepared(_RECEIPTS.insert())
_JOB_FIELDS = (
    _JOBS.c.id,
    _JOBS.c.buyer_address,
    _JOBS.c.provider_address,
    _JOBS.c.model,
    _JOBS.c.status,
    _JOBS.c.hold_amount,
    _JOBS.c.price_in_per_mtok,
    _JOBS.c.price_out_per_mtok,
    _JOBS.c.api_key_id,
)
_READ_JOB = Prepared(select(*_JOB_FIELDS).where(_JOBS.c.id == bindparam("job_id")))
_FINISH_JOB = Prepared(
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"))
    .values(
        status=bindparam("new_status"),
        finished_at=bindparam("new_finished_at"),
        error=bindparam("new_error"),
    )
)


class JobRepository:
    """Reads and writes of jobs and receipts within the caller's session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add_job(self, job: Job) -> Job:
        """Adds a job row (flushed with the rest of the transaction)."""
        self.session.add(job)
        return job

    def insert_job(self, values: dict[str, Any]) -> None:
        """Inserts a job row (one Core statement, no unit of work)."""
        _INSERT_JOB(self.session, values)

    def read_job(self, job_id: str) -> Any:
        """The job's row (id, buyer, provider, model, status, hold, prices, API key), or None."""
        return _READ_JOB(self.session, {"job_id": job_id}).first()

    def finish_job(
        self, job_id: str, status: JobStatus, finished_at: datetime, error: str | None
    ) -> None:
        """Sets a job's final status, finish time and error."""
        params = {
            "job_id": job_id,
            "new_status": status,
            "new_finished_at": finished_at,
            "new_error": error,
        }
        _FINISH_JOB(self.session, params)
        expire(self.session, Job, [job_id])

    def insert_receipt(self, values: dict[str, Any]) -> None:
        """Inserts a verified receipt row (one Core statement)."""
        _INSERT_RECEIPT(self.session, values)

    def get_job(self, job_id: str) -> Job | None:
        """The job with this id, if any (none holds a NUL, which PostgreSQL cannot store)."""
        return None if "\x00" in job_id else self.session.get(Job, job_id)

    def add_receipt(self, receipt: Receipt) -> Receipt:
        """Adds a verified receipt row."""
        self.session.add(receipt)
        return receipt

    def get_receipt(self, job_id: str) -> Receipt | None:
        """The verified receipt of a job, if any."""
        return self.session.scalars(select(Receipt).where(Receipt.job_id == job_id)).first()

    def buyer_history(
        self, buyer: str, limit: int, before: tuple[datetime, str] | None = None
    ) -> list[Any]:
        """The buyer's latest `limit` jobs, newest first (ties by id), each with its receipt's
        figures and site if it has one; `before`: only jobs older than that (created_at, id).
        One index range of `ix_jobs_buyer_created`, whatever the buyer's history holds."""
        query = (
            select(
                Job.id,
                Job.status,
                Job.model,
                Job.stream,
                Job.provider_address,
                Job.created_at,
                Job.finished_at,
                Job.error,
                Receipt.job_id.label("receipt_job_id"),
                Receipt.prompt_tokens,
                Receipt.completion_tokens,
                Receipt.charge,
                Receipt.interrupted_reason,
                Receipt.epoch,
                Receipt.energy_method,
                Receipt.energy_mj,
                Receipt.energy_basis,
                EnergySite.site,
            )
            .outerjoin(Receipt, Receipt.job_id == Job.id)
            .outerjoin(EnergySite, EnergySite.id == Receipt.energy_site_id)
            .where(Job.buyer_address == buyer)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(limit)
        )
        if before is not None:
            created_at, job_id = before
            query = query.where(
                or_(
                    Job.created_at < created_at,
                    and_(Job.created_at == created_at, Job.id < job_id),
                )
            )
        return list(self.session.execute(query).all())

    def rejected_receipts(self, job_id: str) -> list[RejectedReceipt]:
        """Refused receipts of a job, oldest first."""
        query = (
            select(RejectedReceipt)
            .where(RejectedReceipt.job_id == job_id)
            .order_by(RejectedReceipt.id)
        )
        return list(self.session.scalars(query))
