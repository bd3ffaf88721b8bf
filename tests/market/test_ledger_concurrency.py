"""Concurrent writers cannot overdraw a buyer, double-place a hold, or deadlock.

Each thread owns its transaction through `session_scope`, as a request would. On PostgreSQL
this exercises `SELECT ... FOR UPDATE` on the account rows; on SQLite, `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from market.db import session_scope
from market.errors import InsufficientFundsError
from market.ledger import service as ledger
from market.ledger.service import PROTOCOL_FEES, buyer_available, buyer_held, provider_earned
from tests.market.factories import funded_buyer, new_address, new_job_id

T = TypeVar("T")
THREADS = 12


def _race(
    session_factory: sessionmaker[Session], work: list[Callable[[Session], T]]
) -> list[T | Exception]:
    """Runs each piece of work in its own thread and transaction, all released at once."""
    barrier = threading.Barrier(len(work))

    def run(job: Callable[[Session], T]) -> T | Exception:
        barrier.wait(timeout=30)
        try:
            with session_scope(session_factory) as session:
                return job(session)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        return list(pool.map(run, work))


def test_concurrent_holds_never_overdraw(session_factory: sessionmaker[Session]) -> None:
    with session_scope(session_factory) as session:
        buyer = funded_buyer(session, 100)

    def hold(job_id: str) -> Callable[[Session], int]:
        return lambda session: ledger.place_hold(session, buyer, job_id, 30).id

    outcomes = _race(session_factory, [hold(new_job_id()) for _ in range(THREADS)])

    placed = [o for o in outcomes if isinstance(o, int)]
    refused = [o for o in outcomes if isinstance(o, InsufficientFundsError)]
    assert len(placed) == 3, outcomes
    assert len(refused) == THREADS - 3, outcomes
    with session_scope(session_factory) as session:
        assert ledger.balance(session, buyer_available(buyer)) == 10
        assert ledger.balance(session, buyer_held(buyer)) == 90
        ledger.check_ledger(session)


def test_concurrent_holds_for_one_job_place_it_once(
    session_factory: sessionmaker[Session],
) -> None:
    with session_scope(session_factory) as session:
        buyer = funded_buyer(session, 1_000)
    job = new_job_id()

    outcomes = _race(
        session_factory,
        [lambda session: ledger.place_hold(session, buyer, job, 70).id] * THREADS,
    )

    assert all(isinstance(o, int) for o in outcomes), outcomes
    assert len(set(outcomes)) == 1
    with session_scope(session_factory) as session:
        assert ledger.balance(session, buyer_held(buyer)) == 70
        assert ledger.balance(session, buyer_available(buyer)) == 930
        ledger.check_ledger(session)


def test_mixed_holds_settles_and_releases_do_not_deadlock(
    session_factory: sessionmaker[Session],
) -> None:
    """Writers that touch overlapping accounts in every combination all finish."""
    provider = new_address()
    with session_scope(session_factory) as session:
        buyers = [funded_buyer(session, 10_000) for _ in range(3)]
        open_jobs = []
        for buyer in buyers:
            for _ in range(4):
                job = new_job_id()
                ledger.place_hold(session, buyer, job, 100)
                open_jobs.append(job)

    work: list[Callable[[Session], object]] = []
    for i, job in enumerate(open_jobs):
        if i % 2:
            work.append(lambda s, job=job: ledger.settle_hold(s, job, 60, provider, 6).id)  # type: ignore[misc]
        else:
            work.append(lambda s, job=job: ledger.release_hold(s, job).id)  # type: ignore[misc]
    for buyer in buyers:
        work.append(lambda s, buyer=buyer: ledger.place_hold(s, buyer, new_job_id(), 50).id)  # type: ignore[misc]

    outcomes = _race(session_factory, work)

    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    with session_scope(session_factory) as session:
        assert ledger.balance(session, provider_earned(provider)) == 6 * 54
        assert ledger.balance(session, PROTOCOL_FEES) == 6 * 6
        for buyer in buyers:
            assert ledger.balance(session, buyer_held(buyer)) == 50
            assert ledger.balance(session, buyer_available(buyer)) == 10_000 - 2 * 60 - 50
        ledger.check_ledger(session)
