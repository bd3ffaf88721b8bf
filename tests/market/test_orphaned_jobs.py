"""Jobs whose API process stopped are failed and their holds released (`market.jobs.orphans`),
on SQLite and PostgreSQL; a served market releases them as it starts."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from market.app import create_app
from market.config import Settings
from market.db import session_scope, utcnow
from market.jobs import orphans
from market.jobs import service as jobs
from market.jobs.models import ApiProcess, Job, JobStatus
from market.jobs.repository import JobRepository
from market.jobs.tasks import release_orphaned_jobs
from market.ledger import service as ledger
from market.ledger.models import HoldStatus
from market.runtime import Runtime
from tests.market.factories import funded_buyer, new_address, new_job_id
from tests.market.inference.servers import serve

DEPOSIT = 1_000
HOLD = 100
LIVE, DEAD, UNSEEN = "a" * 32, "b" * 32, "c" * 32


def _open(session: Session, buyer: str, process_id: str | None, age_s: float = 0) -> str:
    job_id = new_job_id()
    order = jobs.JobOrder(
        job_id=job_id,
        buyer=buyer,
        provider=new_address(),
        model="tiny-llama",
        stream=True,
        price_in=1,
        price_out=1,
        hold=HOLD,
        max_tokens=16,
        process_id=process_id,
    )
    jobs.open_job(session, order)
    if age_s:
        created = utcnow() - timedelta(seconds=age_s)
        session.execute(update(Job).where(Job.id == job_id).values(created_at=created))
    return job_id


def _state(session: Session, job_id: str) -> tuple[JobStatus, HoldStatus]:
    job = session.get(Job, job_id)
    assert job is not None
    return job.status, ledger.get_hold(session, job_id).status


@pytest.fixture
def scene(session_factory: sessionmaker[Session]) -> dict[str, str]:
    """A buyer with five open jobs: one of a live process, two of a dead one (silent for two
    minutes), one of a process that never beat (opened two minutes ago), one from before
    processes were kept (none named, two minutes old) and one just opened by a process
    whose first beat is still to come."""
    with session_scope(session_factory) as session:
        buyer = funded_buyer(session, DEPOSIT)
        orphans.beat(session, LIVE)
        orphans.beat(session, DEAD, utcnow() - timedelta(seconds=120))
        return {
            "buyer": buyer,
            "live": _open(session, buyer, LIVE, 300),
            "dead": _open(session, buyer, DEAD, 130),
            "dead2": _open(session, buyer, DEAD, 125),
            "never_beat": _open(session, buyer, UNSEEN, 120),
            "legacy": _open(session, buyer, None, 120),
            "new": _open(session, buyer, "d" * 32),
        }


def test_jobs_of_silent_processes_are_released(
    session_factory: sessionmaker[Session], scene: dict[str, str]
) -> None:
    released = orphans.release_orphans(session_factory, 60)
    assert released == [scene[k] for k in ("dead", "dead2", "never_beat", "legacy")]
    with session_scope(session_factory) as session:
        for key in released:
            assert _state(session, key) == (JobStatus.FAILED, HoldStatus.RELEASED)
        job = session.get(Job, scene["dead"])
        assert job is not None
        assert job.error == "the market process serving it stopped (no heartbeat for 60 s)"
        for key in ("live", "new"):
            assert _state(session, scene[key]) == (JobStatus.ROUTED, HoldStatus.OPEN)
        statement = ledger.statement(session, scene["buyer"])
        assert (statement.available, statement.held) == (DEPOSIT - 2 * HOLD, 2 * HOLD)
        ledger.check_ledger(session)
    assert orphans.release_orphans(session_factory, 60) == []  # a second round finds none


def test_a_job_charged_while_the_release_waits_for_it_is_left_alone(
    session_factory: sessionmaker[Session], scene: dict[str, str]
) -> None:
    """Its request charges it in a transaction the release pass waits for (the hold's row
    lock on PostgreSQL, the write lock on SQLite): the pass then leaves it as charged."""
    job_id = scene["dead"]
    request = session_factory()
    request.begin()
    ledger.settle_hold(request, job_id, 40, new_address(), 2)  # what `complete_job` does
    JobRepository(request).finish_job(job_id, JobStatus.COMPLETED, utcnow(), None)
    released: list[str] = []
    sweeper = threading.Thread(
        target=lambda: released.extend(orphans._release(session_factory, [job_id], "test"))
    )
    sweeper.start()
    time.sleep(0.5)  # the pass is waiting on the request's transaction
    assert sweeper.is_alive()
    request.commit()
    request.close()
    sweeper.join(timeout=30)
    assert released == []
    with session_scope(session_factory) as session:
        assert _state(session, job_id) == (JobStatus.COMPLETED, HoldStatus.SETTLED)
        ledger.check_ledger(session)


def test_a_process_that_shuts_down_releases_its_own_jobs(
    session_factory: sessionmaker[Session], scene: dict[str, str]
) -> None:
    assert orphans.retire(session_factory, LIVE) == [scene["live"]]
    with session_scope(session_factory) as session:
        assert _state(session, scene["live"]) == (JobStatus.FAILED, HoldStatus.RELEASED)
        job = session.get(Job, scene["live"])
        assert job is not None
        assert job.error == "the market process serving it shut down"
        assert session.get(ApiProcess, LIVE) is None
        assert _state(session, scene["dead"]) == (JobStatus.ROUTED, HoldStatus.OPEN)


def test_a_heartbeat_renews_the_row(session_factory: sessionmaker[Session]) -> None:
    with session_scope(session_factory) as session:
        orphans.beat(session, LIVE, utcnow() - timedelta(seconds=120))
        first = session.get(ApiProcess, LIVE)
        assert first is not None
        started = first.started_at
    with session_scope(session_factory) as session:
        orphans.beat(session, LIVE)
        row = session.get(ApiProcess, LIVE)
        assert row is not None
        assert row.started_at == started
        assert utcnow() - row.heartbeat_at < timedelta(seconds=5)


def test_a_market_that_starts_releases_the_jobs_a_crashed_one_left(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The embedded schedule's first round runs as the API starts: the holds a killed
    process left (its heartbeat stopped two minutes ago) are released at once, and the new
    process beats."""
    settings = Settings(database_url=sqlite_url, var_dir=tmp_path, agent_read_timeout_s=240)
    runtime = Runtime.build(settings)
    assert runtime.agents.timeout.sock_read == 240  # the built runtime's client to agents
    sessions = runtime.sessions
    with session_scope(sessions) as session:
        buyer = funded_buyer(session, DEPOSIT)
        orphans.beat(session, DEAD, utcnow() - timedelta(seconds=120))
        left = _open(session, buyer, DEAD, 130)
    served = serve(create_app(settings, runtime))
    try:
        deadline = time.monotonic() + 20
        while True:
            with session_scope(sessions) as session:
                status = _state(session, left)
                beating = session.scalars(select(ApiProcess.id).where(ApiProcess.id != DEAD))
                if status[0] is JobStatus.FAILED and list(beating):
                    break
            assert time.monotonic() < deadline, f"still {status}"
            time.sleep(0.1)
        assert status == (JobStatus.FAILED, HoldStatus.RELEASED)
        assert release_orphaned_jobs(sessions, settings) == 0
    finally:
        served.stop()
    with session_scope(sessions) as session:  # the clean shutdown dropped its row
        assert list(session.scalars(select(ApiProcess.id).where(ApiProcess.id != DEAD))) == []
        assert ledger.statement(session, buyer).available == DEPOSIT
        ledger.check_ledger(session)
