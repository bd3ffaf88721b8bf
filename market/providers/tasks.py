"""Background work of the providers package."""

from __future__ import annotations

import asyncio

from market.providers.service import live_offers
from market.routing.table import LiveOffer
from market.runtime import Runtime


def _load(runtime: Runtime) -> list[LiveOffer]:
    session = runtime.sessions()
    try:
        return live_offers(session, runtime.settings.heartbeat_timeout_s)
    finally:
        session.rollback()
        session.close()


async def refresh_routing(runtime: Runtime) -> None:
    """Rebuilds the routing table from the offers of providers that are online.

    The query runs in a worker thread; the table is swapped on the event loop, where routing
    reads it, so a request never sees half a table.
    """
    offers = await asyncio.to_thread(_load, runtime)
    runtime.routing.replace(offers)
