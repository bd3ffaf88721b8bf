"""Background work of the settlement package: the deposit watcher and epoch closing."""

from __future__ import annotations

from market.background import Periodic
from market.runtime import Runtime


def embedded_schedule(runtime: Runtime) -> list[Periodic]:
    """The periodic tasks the API runs itself in the embedded mode (no worker, no beat)."""
    return []
