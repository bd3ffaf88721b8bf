"""Choosing providers for one request: filters first, then the buyer's sort order."""

from __future__ import annotations

from dataclasses import dataclass

from market.routing.schemas import ProviderPreferences
from market.routing.table import LiveOffer, RoutingTable

DEFAULT_ATTEMPTS = 3


@dataclass(frozen=True)
class RouteRequest:
    """What routing needs to know of a request."""

    model: str
    preferences: ProviderPreferences
    attempts: int = DEFAULT_ATTEMPTS


def _passes(offer: LiveOffer, prefs: ProviderPreferences) -> bool:
    if not offer.has_capacity:
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


def choose(table: RoutingTable, request: RouteRequest) -> list[LiveOffer]:
    """Providers to try, in order: the best one, then fallbacks if the buyer allows them.

    An empty list means no provider on offer passes the buyer's filters right now.
    """
    prefs = request.preferences
    limit = request.attempts if prefs.allow_fallbacks else 1
    key = prefs.sort or "price"
    if prefs.only is not None:  # a short allow-list: look its offers up instead of walking all
        found = (table.get(request.model, provider) for provider in prefs.only)
        candidates = sorted((o for o in found if o is not None), key=lambda o: o.sort_value(key))
    else:
        candidates = table.offers(request.model, key)
    chosen: list[LiveOffer] = []
    for offer in candidates:
        if _passes(offer, prefs):
            chosen.append(offer)
            if len(chosen) == limit:
                break
    return chosen
