"""The Celery application: the settlement tasks, the receipt-check pass, the release of
jobs whose API process stopped, the reconciliation of the ledger with the chain, and beat's
schedule of them.

Configured from the settings: the broker is `MARKET_BROKER_URL` (Redis); with `memory://`
(embedded mode) tasks run eagerly in the caller. Start a worker with `market worker` and the
scheduler with `market beat` (or `celery -A market.worker worker|beat`). Tasks take no objects,
build their database and chain connections once per worker process, and are idempotent.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from market.chain.service import open_chain
from market.config import Settings, get_settings
from market.db import create_engine, make_session_factory
from market.jobs import tasks as job_tasks
from market.reviews.receipts import INTERVAL_S as CHECK_INTERVAL_S
from market.settlement import tasks
from market.settlement.tasks import RECONCILE_INTERVAL_S, WATCH_INTERVAL_S, TaskContext

WATCH_DEPOSITS = "market.settlement.watch_deposits"
CLOSE_EPOCH = "market.settlement.close_epoch"
CHECK_RECEIPTS = "market.reviews.check_receipts"
RELEASE_ORPHANED_JOBS = "market.jobs.release_orphaned_jobs"
RECONCILE_CHAIN = "market.settlement.reconcile_chain"


def create_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`, with the tasks registered and beat's schedule."""
    app = Celery("market", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_always_eager=settings.eager_tasks,
        task_eager_propagates=True,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "watch-deposits": {
                "task": WATCH_DEPOSITS,
                "schedule": WATCH_INTERVAL_S,
                "options": {"expires": WATCH_INTERVAL_S * 5},
            },
            "check-receipts": {
                "task": CHECK_RECEIPTS,
                "schedule": CHECK_INTERVAL_S,
                "options": {"expires": CHECK_INTERVAL_S * 2},
            },
            "release-orphaned-jobs": {
                "task": RELEASE_ORPHANED_JOBS,
                "schedule": job_tasks.RELEASE_INTERVAL_S,
                "options": {"expires": job_tasks.RELEASE_INTERVAL_S * 2},
            },
            "close-epoch": {
                "task": CLOSE_EPOCH,
                "schedule": float(settings.epoch_seconds),
                "options": {"expires": float(settings.epoch_seconds)},
            },
            "reconcile-chain": {
                "task": RECONCILE_CHAIN,
                "schedule": RECONCILE_INTERVAL_S,
                "options": {"expires": RECONCILE_INTERVAL_S},
            },
        },
    )

    @app.task(name=WATCH_DEPOSITS)  # type: ignore[untyped-decorator]
    def watch_deposits() -> int:
        return tasks.watch_deposits(task_context())

    @app.task(name=CHECK_RECEIPTS)  # type: ignore[untyped-decorator]
    def check_receipts() -> int:
        return tasks.check_receipts(task_context())

    @app.task(name=RELEASE_ORPHANED_JOBS)  # type: ignore[untyped-decorator]
    def release_orphaned_jobs() -> int:
        ctx = task_context()
        return job_tasks.release_orphaned_jobs(ctx.sessions, ctx.settings)

    @app.task(name=CLOSE_EPOCH)  # type: ignore[untyped-decorator]
    def close_epoch() -> int | None:
        return tasks.close_epoch(task_context())

    @app.task(name=RECONCILE_CHAIN)  # type: ignore[untyped-decorator]
    def reconcile_chain() -> int | None:
        result = tasks.reconcile_chain(task_context())
        return None if result is None else result.count

    return app


@lru_cache(maxsize=1)
def task_context() -> TaskContext:
    """This process's database and chain connections, built on first use."""
    settings = get_settings()
    return TaskContext(
        settings=settings,
        sessions=make_session_factory(create_engine(settings.database_url)),
        chain=open_chain(settings),
    )


def __getattr__(name: str) -> Any:
    # `celery -A market.worker` looks for `app`/`celery`; build it on first access only, so
    # importing this module does not read the settings.
    if name in ("app", "celery"):
        return celery_app()
    raise AttributeError(name)


@lru_cache(maxsize=1)
def celery_app() -> Celery:
    """The process's Celery app, from its settings."""
    return create_celery(get_settings())
