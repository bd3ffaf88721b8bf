"""Background work of the jobs package: the API process's heartbeat, and the release of jobs
whose process stopped (`market.jobs.orphans`)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.orm import Session, sessionmaker

from market.config import Settings
from market.db import session_scope
from market.jobs import orphans
from market.runtime import Runtime

log = logging.getLogger(__name__)

RELEASE_INTERVAL_S = 15.0
"""How often the jobs of stopped processes are looked for."""


def _beat(runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        orphans.beat(session, runtime.process_id)


async def heartbeat(runtime: Runtime) -> None:
    """Renews this API process's heartbeat (in a worker thread, off the event loop)."""
    await asyncio.to_thread(_beat, runtime)


def release_orphaned_jobs(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Fails the jobs of API processes silent for `orphaned_job_after_s` and releases their
    holds; how many."""
    released = orphans.release_orphans(sessions, settings.orphaned_job_after_s)
    if released:
        log.warning(
            "released the holds of %d jobs whose market process stopped: %s",
            len(released),
            ", ".join(released[:10]) + (" ..." if len(released) > 10 else ""),
        )
    return len(released)
