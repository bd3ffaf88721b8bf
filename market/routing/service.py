"""Choosing providers for one request: filters first, then the buyer's sort order.

Offers whose sort figure is within `NEAR` (5 %) of the best passing offer are near-equals:
their order is drawn at random, weighted towards the less loaded (weight 1 / (1 + in
flight)), so equal offers share the traffic instead of the first in the table taking it all.
The draw looks at no more than `SPREAD_LIMIT` near-equals, so a decision stays cheap however
many providers are on offer (benchmarks/routing.py).

A request that sets its completion limit (`RouteRequest.completion_tokens`) skips
offers whose reported context is shorter, since their engine would refuse it; offers that do
not report a context are never skipped. When no offer of the model has that much context,
routing refuses the request (400, `CompletionLimitTooLargeError`) rather than answer that no
provider is available now: no provider ever would be.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from market.routing.errors import CompletionLimitTooLargeError
from market.routing.schemas import ProviderPreferences
from market.routing.table import LiveOffer, RoutingTable, longest_context

DEFAULT_ATTEMPTS = 3
NEAR = 0.05
"""Relative distance from the best sort figure within which offers count as equals."""
SPREAD_LIMIT = 32
"""The most near-equal offers one decision shuffles."""
_RANDOM = random.Random()  # noqa: S311 (load spreading, not secrets)


@dataclass(frozen=True)
class RouteRequest:
    """What routing needs to know of a request."""

    model: str
    preferences: ProviderPreferences
    attempts: int = DEFAULT_ATTEMPTS
    completion_tokens: int | None = None
    """The completion limit the request set explicitly (None: it set none)."""
    completion_param: str = "max_tokens"
    """The request's parameter that set it (`max_tokens` or `max_completion_tokens`)."""


def _passes(offer: LiveOffer, prefs: ProviderPreferences, needed: int) -> bool:
    if not offer.has_capacity:
        return False
    if offer.context_length is not None and offer.context_length < needed:
        return False
    if prefs.only is not None and offer.provider not in prefs.only:
        return False
    if prefs.ignore is not None and offer.provider in prefs.ignore:
        return False
    if prefs.regions is not None and offer.region not in prefs.regions:
        return False
    cap = prefs.max_price
    if cap is not None:
        if cap.prompt is not None and offer.price_in_per_mtok > cap.prompt:
            return False
        if cap.completion is not None and offer.price_out_per_mtok > cap.completion:
            return False
    if prefs.max_joules_per_token is not None and (
        offer.joules_per_token is None or offer.joules_per_token > prefs.max_joules_per_token
    ):
        return False
    return prefs.max_gco2_per_mtok is None or (
        offer.gco2_per_mtok is not None and offer.gco2_per_mtok <= prefs.max_gco2_per_mtok
    )


def near_bound(best: float) -> float:
    """The largest sort figure still a near-equal of `best` (ascending order, any sign)."""
    return best + abs(best) * NEAR


def spread(offers: list[LiveOffer], rng: random.Random) -> list[LiveOffer]:
    """`offers` in a random order, weighted towards fewer requests in flight (weighted
    sampling without replacement: each offer's key is u ** (1 / weight), largest first)."""
    if len(offers) < 2:
        return offers
    keyed = [(rng.random() ** (1 + offer.in_flight), offer) for offer in offers]
    keyed.sort(key=lambda pair: pair[0], reverse=True)
    return [offer for _, offer in keyed]


def choose(
    table: RoutingTable, request: RouteRequest, rng: random.Random = _RANDOM
) -> list[LiveOffer]:
    """Providers to try, in order: the best one, then fallbacks if the buyer allows them.

    Near-equal best offers are ordered by a load-weighted draw from `rng` (inject a seeded
    `random.Random` for a reproducible order). An empty list means no provider on offer
    passes the buyer's filters right now. `CompletionLimitTooLargeError` when the request's
    explicit completion limit exceeds the context of every offer it may go to.
    """
    prefs = request.preferences
    limit = request.attempts if prefs.allow_fallbacks else 1
    key = prefs.sort or "price"
    needed = request.completion_tokens or 0
    if prefs.only is not None:  # a short allow-list: look its offers up instead of walking all
        found = (table.get(request.model, provider) for provider in prefs.only)
        candidates = sorted((o for o in found if o is not None), key=lambda o: o.sort_value(key))
        longest = longest_context(candidates)
    else:
        candidates = table.offers(request.model, key)
        longest = table.longest_context(request.model)
    if needed > longest and candidates:
        param = request.completion_param
        raise CompletionLimitTooLargeError(request.model, param, needed, int(longest))
    passing: Iterator[LiveOffer] = (o for o in candidates if _passes(o, prefs, needed))
    best = next(passing, None)
    if best is None:
        return []
    bound = near_bound(best.sort_value(key)[0])
    near = [best]
    after: LiveOffer | None = None
    for offer in passing:
        if len(near) == SPREAD_LIMIT or offer.sort_value(key)[0] > bound:
            after = offer
            break
        near.append(offer)
    chosen = spread(near, rng)[:limit]
    if after is not None and len(chosen) < limit:
        chosen.append(after)
        for offer in passing:
            if len(chosen) == limit:
                break
            chosen.append(offer)
    return chosen
