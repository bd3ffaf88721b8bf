"""The routing table: live offers per model, kept pre-sorted by every sort key.

A routing decision walks one pre-sorted list and stops at the first providers that pass the
buyer's filters, so its cost does not grow with the number of providers on offer in the common
case (see benchmarks). The table is rebuilt from the database when offers change and updated
in place for load (requests in flight).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from market.energy.accounting import SiteProfile
from market.routing.schemas import SortKey

UNKNOWN = math.inf


@dataclass(eq=False)
class LiveOffer:
    """One provider's offer for one model, with the figures routing sorts and filters by."""

    provider: str
    model: str
    region: str
    price_in_per_mtok: int
    price_out_per_mtok: int
    max_concurrency: int
    job_url: str
    public_key: str = ""  # the provider's Ed25519 key (hex) that signs its receipts
    latency_ms: float = UNKNOWN
    tokens_per_s: float = 0.0
    joules_per_token: float | None = None
    gco2_per_mtok: float | None = None
    energy_cost_per_mtok: float | None = None
    energy_concurrency: float | None = None
    """Average running requests over the windows `joules_per_token` was measured in."""
    context_length: int | None = None
    """The most tokens (prompt and completion) its engine serves in one request, as it
    reports it (vLLM's `max_model_len`); None when not reported."""
    site: SiteProfile | None = field(default=None, compare=False)
    """The offer's energy site, built once per refresh (None: only `region` is known)."""
    in_flight: int = field(default=0, compare=False)

    @property
    def has_capacity(self) -> bool:
        """Whether it can take one more request now."""
        return self.in_flight < self.max_concurrency

    def sort_value(self, key: SortKey) -> tuple[float, ...]:
        """Ascending sort key; unknown figures sort last."""
        if key == "price":
            return (self.price_out_per_mtok, self.price_in_per_mtok, self.latency_ms)
        if key == "latency":
            return (self.latency_ms, self.price_out_per_mtok)
        if key == "throughput":
            return (-self.tokens_per_s, self.price_out_per_mtok)
        figure = {
            "energy": self.joules_per_token,
            "carbon": self.gco2_per_mtok,
            "energy_cost": self.energy_cost_per_mtok,
        }[key]
        return (UNKNOWN if figure is None else figure, self.price_out_per_mtok)


SORT_KEYS: tuple[SortKey, ...] = (
    "price",
    "latency",
    "throughput",
    "energy",
    "carbon",
    "energy_cost",
)


def _sorted_by(offers: list[LiveOffer], key: SortKey) -> list[LiveOffer]:
    return sorted(offers, key=lambda offer: offer.sort_value(key))


class RoutingTable:
    """Offers by model, each list sorted once per sort key."""

    def __init__(self, offers: Iterable[LiveOffer] = ()) -> None:
        self._by_model: dict[str, dict[SortKey, list[LiveOffer]]] = {}
        self._by_provider: dict[tuple[str, str], LiveOffer] = {}
        self._longest: dict[str, float] = {}
        self.replace(offers)

    def replace(self, offers: Iterable[LiveOffer]) -> None:
        """Replaces every offer, keeping the in-flight counts of providers still on offer."""
        grouped: dict[str, list[LiveOffer]] = {}
        by_provider: dict[tuple[str, str], LiveOffer] = {}
        for offer in offers:
            previous = self._by_provider.get((offer.model, offer.provider))
            if previous is not None:
                offer.in_flight = previous.in_flight
            grouped.setdefault(offer.model, []).append(offer)
            by_provider[(offer.model, offer.provider)] = offer
        self._by_model = {
            model: {key: _sorted_by(group, key) for key in SORT_KEYS}
            for model, group in grouped.items()
        }
        self._by_provider = by_provider
        self._longest = {model: longest_context(group) for model, group in grouped.items()}

    def models(self) -> list[str]:
        """Models with at least one offer."""
        return sorted(self._by_model)

    def offers(self, model: str, key: SortKey = "price") -> list[LiveOffer]:
        """Offers for `model`, best first by `key`."""
        return self._by_model.get(model, {}).get(key, [])

    def get(self, model: str, provider: str) -> LiveOffer | None:
        """The offer of `provider` for `model`, if on offer."""
        return self._by_provider.get((model, provider))

    def longest_context(self, model: str) -> float:
        """The longest context any offer of `model` serves (`longest_context`), kept per
        refresh so that a request no offer can hold is told so without a walk."""
        return self._longest.get(model, UNKNOWN)


def longest_context(offers: Iterable[LiveOffer]) -> float:
    """The longest `context_length` of `offers`: infinite when one does not report its
    context (it may hold anything), or when there are no offers."""
    longest = 0.0
    for offer in offers:
        if offer.context_length is None:
            return UNKNOWN
        longest = max(longest, offer.context_length)
    return longest or UNKNOWN
