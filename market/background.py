"""Work the API process does in the background: keeping the routing table fresh, and, in the
embedded mode (no separate worker or beat), the periodic tasks a worker would run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from market.runtime import Runtime

log = logging.getLogger(__name__)

Periodic = tuple[str, float, Callable[[Runtime], Awaitable[None]]]


def periodic_jobs(runtime: Runtime) -> list[Periodic]:
    """(name, interval seconds, coroutine) for everything the API process runs periodically."""
    from market.providers.tasks import refresh_routing

    jobs: list[Periodic] = [("refresh_routing", 1.0, refresh_routing)]
    if runtime.settings.eager_tasks:
        from market.settlement.tasks import embedded_schedule

        jobs.extend(embedded_schedule(runtime))
    return jobs


async def _loop(
    runtime: Runtime, name: str, interval: float, job: Callable[[Runtime], Awaitable[None]]
) -> None:
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
        asyncio.create_task(_loop(runtime, name, interval, job), name=name)
        for name, interval, job in periodic_jobs(runtime)
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
