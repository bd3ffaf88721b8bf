"""Background work of the providers package."""

from __future__ import annotations

from market.runtime import Runtime


async def refresh_routing(runtime: Runtime) -> None:
    """Rebuilds the routing table from the offers of providers that are online."""
