"""Work the API process does in the background: keeping the routing table fresh, renewing its
heartbeat (`market.jobs.orphans`), and, in the embedded mode (no separate worker or beat),
the periodic tasks a worker would run. When it stops, it releases the jobs it left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

from market.runtime import Runtime

log = logging.getLogger(__name__)


class Periodic(NamedTuple):
    """A job the API process runs every `interval` seconds: at once and then after each round,
    or, with `wait_first`, only once a whole interval has passed (as celery beat schedules
    it), for a job whose round stands for the interval (closing an epoch)."""

    name: str
    interval: float
    job: Callable[[Runtime], Awaitable[None]]
    wait_first: bool = False


def periodic_jobs(runtime: Runtime) -> list[Periodic]:
    """(name, interval seconds, coroutine) for everything the API process runs periodically."""
    from market.jobs.orphans import HEARTBEAT_S
    from market.jobs.tasks import heartbeat
    from market.providers.tasks import refresh_routing

    jobs = [
        Periodic("refresh_routing", 1.0, refresh_routing),
        Periodic("heartbeat", HEARTBEAT_S, heartbeat),
    ]
    if runtime.settings.eager_tasks:
        from market.settlement.tasks import embedded_schedule

        jobs.extend(embedded_schedule(runtime))
    return jobs


async def _loop(runtime: Runtime, periodic: Periodic) -> None:
    name, interval, job, wait_first = periodic
    if wait_first:
        await asyncio.sleep(interval)
    while True:
        try:
            await job(runtime)
        except asyncio.CancelledError:
            raise
        except Exception:  # a failing round is logged and retried next interval
            log.exception("background job %s failed", name)
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[None]:
    """Runs the periodic jobs for as long as the context is open."""
    tasks = [
        asyncio.create_task(_loop(runtime, periodic), name=periodic.name)
        for periodic in periodic_jobs(runtime)
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _retire(runtime)


async def _retire(runtime: Runtime) -> None:
    """Releases the jobs this process left open (its requests are over) and drops its row."""
    from market.jobs.orphans import retire

    try:
        released = await asyncio.to_thread(retire, runtime.sessions, runtime.process_id)
    except Exception:  # the database is gone: the jobs are released once found orphaned
        log.exception("could not release this process's open jobs at shutdown")
        return
    if released:
        log.warning("released the holds of %d jobs left open at shutdown", len(released))
