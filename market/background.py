"""Work the API process does in the background: keeping the routing table fresh, and, in the
embedded mode (no separate worker or beat), the periodic tasks a worker would run.
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
    from market.providers.tasks import refresh_routing

    jobs = [Periodic("refresh_routing", 1.0, refresh_routing)]
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
