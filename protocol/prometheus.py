"""The Prometheus registry both servers expose at `GET /metrics`.

Each app has its own registry, so several apps in one process (the tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.registry import Collector


def registry_with(collector: Collector) -> CollectorRegistry:
    """A registry with the process, platform and GC metrics and `collector`'s own."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(collector)
    return registry
