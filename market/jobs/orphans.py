"""Jobs whose API process stopped: their holds are released, so no buyer's money stays held.

A job's hold is ended by the API process that opened it, when the request ends. A process
that crashes, is killed or is cut off from its database mid-request ends none of its jobs,
and their holds would stay held for good. So every API process keeps an `ApiProcess` row
whose heartbeat it renews every `HEARTBEAT_S` (`beat`) and names itself in each job it opens
(`jobs.process_id`). `release_orphans` (the worker's beat, or the embedded schedule) fails
every job still routed whose process has not beaten for `orphaned_job_after_s`, releasing
its hold, one job per transaction. A process that shuts down cleanly ends its own at once
(`retire`).

A job released while its process was in fact alive (its event loop stalled past the bound)
cannot be charged afterwards: its receipt's charge finds the hold released and is refused,
so the ledger stays whole and the buyer pays nothing for it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from market.db import session_scope, utcnow
from market.errors import HoldClosedError
from market.jobs.models import ApiProcess, Job, JobStatus
from market.jobs.service import fail_job

HEARTBEAT_S = 5.0
"""How often an API process renews its heartbeat."""
BATCH = 500
"""Jobs released per round at most (the next round takes the rest)."""


def beat(session: Session, process_id: str, now: datetime | None = None) -> None:
    """Renews the process's heartbeat (its row is made on the first beat)."""
    now = now or utcnow()
    renewed = session.execute(
        update(ApiProcess).where(ApiProcess.id == process_id).values(heartbeat_at=now)
    )
    if not getattr(renewed, "rowcount", 0):
        session.add(ApiProcess(id=process_id, started_at=now, heartbeat_at=now))
    session.flush()


def orphaned(session: Session, after_s: float, now: datetime | None = None) -> list[str]:
    """Ids of routed jobs whose process has not beaten for `after_s` seconds, oldest first;
    a job with no process row (none beat yet, or a job from before processes were kept)
    once it is older than that."""
    cutoff = (now or utcnow()) - timedelta(seconds=after_s)
    query = (
        select(Job.id)
        .outerjoin(ApiProcess, ApiProcess.id == Job.process_id)
        .where(
            Job.status == JobStatus.ROUTED,
            or_(
                ApiProcess.heartbeat_at < cutoff,
                and_(ApiProcess.id.is_(None), Job.created_at < cutoff),
            ),
        )
        .order_by(Job.created_at)
        .limit(BATCH)
    )
    return list(session.scalars(query))


def _release(sessions: sessionmaker[Session], job_ids: list[str], reason: str) -> list[str]:
    """Fails each job and releases its hold, in a transaction of its own; the ids released
    (a job whose receipt was charged meanwhile is left as it is)."""
    released = []
    for job_id in job_ids:
        try:
            with session_scope(sessions) as session:
                if fail_job(session, job_id, reason):
                    released.append(job_id)
        except HoldClosedError:  # charged by its request, which committed as we waited
            continue
    return released


def release_orphans(sessions: sessionmaker[Session], after_s: float) -> list[str]:
    """Releases the jobs of processes silent for `after_s` seconds (at most `BATCH`); the
    ids released."""
    with session_scope(sessions) as session:
        job_ids = orphaned(session, after_s)
    reason = f"the market process serving it stopped (no heartbeat for {after_s:g} s)"
    return _release(sessions, job_ids, reason)


def retire(sessions: sessionmaker[Session], process_id: str) -> list[str]:
    """A process shutting down: releases the jobs it left routed and drops its row; the ids
    released."""
    with session_scope(sessions) as session:
        query = select(Job.id).where(Job.status == JobStatus.ROUTED, Job.process_id == process_id)
        job_ids = list(session.scalars(query))
    released = _release(sessions, job_ids, "the market process serving it shut down")
    with session_scope(sessions) as session:
        session.execute(delete(ApiProcess).where(ApiProcess.id == process_id))
    return released
