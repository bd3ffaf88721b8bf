"""Routing decision time: p50/p99 of `choose` for 10, 1,000 and 10,000 providers.

Run from the repository root with `python -m benchmarks.routing`. Half the
offers share the best price, so every decision also draws among near-equals; a quarter are
busy (in flight), and the buyer filters by region, so filtering is on the path too.
"""

from __future__ import annotations

import random
import statistics
import time

from market.routing.schemas import ProviderPreferences
from market.routing.service import RouteRequest, choose
from market.routing.table import LiveOffer, RoutingTable

MODEL = "bench-model"
DECISIONS = 20_000


def table_of(count: int, rng: random.Random) -> RoutingTable:
    """`count` offers: half at one price, the rest spread above it."""
    offers = []
    for i in range(count):
        price = 400_000 if i % 2 == 0 else 400_000 + rng.randrange(1, 400_000)
        offers.append(
            LiveOffer(
                provider=f"0x{i:040x}",
                model=MODEL,
                region=rng.choice(["DE", "US-WA", "SE", "FR"]),
                price_in_per_mtok=100_000,
                price_out_per_mtok=price,
                max_concurrency=8,
                job_url=f"http://p{i}.invalid/jobs",
                latency_ms=rng.uniform(5, 200),
                in_flight=rng.choice([0, 0, 0, 4]),
            )
        )
    return RoutingTable(offers)


def measure(count: int) -> tuple[float, float]:
    """(p50, p99) decision time in microseconds."""
    rng = random.Random(count)  # noqa: S311
    table = table_of(count, rng)
    requests = [
        RouteRequest(MODEL, ProviderPreferences()),
        RouteRequest(MODEL, ProviderPreferences(regions=["SE"])),
        RouteRequest(MODEL, ProviderPreferences(sort="latency")),
    ]
    timings: list[float] = []
    for i in range(DECISIONS):
        request = requests[i % len(requests)]
        start = time.perf_counter_ns()
        choose(table, request, rng)
        timings.append((time.perf_counter_ns() - start) / 1_000)
    quantiles = statistics.quantiles(timings, n=100)
    return quantiles[49], quantiles[98]


def main() -> None:
    """Prints p50/p99 per table size."""
    print(f"{'providers':>10} {'p50 (us)':>10} {'p99 (us)':>10}")
    for count in (10, 1_000, 10_000):
        p50, p99 = measure(count)
        print(f"{count:>10} {p50:>10.1f} {p99:>10.1f}")


if __name__ == "__main__":
    main()
