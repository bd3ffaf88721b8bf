"""The energy site of an offer (what the provider declared, for the accounting chain).

`site_profile(offer)` is built once per offer when routing is refreshed and kept on the
`LiveOffer`, so a response's energy block costs a few `Decimal` multiplications. The same
profile is stored with each receipt (`site_json`), so statements use the site the request
was served at, not whatever the provider declares later.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from market.energy.accounting import MILLI, SiteProfile
from market.energy.data import pue_profiles
from market.providers.models import Offer


def _declared_pue_milli(profile: str | None, pue_milli: int | None) -> int | None:
    """`pue_milli` unless it is just the profile's published value (then the profile's
    source is shown, as a default, rather than "provider-declared")."""
    if pue_milli is None:
        return None
    published = pue_profiles().get(profile or "")
    if published is not None and published.pue.value * MILLI == pue_milli:
        return None
    return pue_milli


def site_profile(offer: Offer) -> SiteProfile:
    """The offer's site: its region, tariff, PUE profile and host overhead (None: undeclared,
    the regional default applies)."""
    return SiteProfile(
        region=offer.region,
        tariff_micro_per_kwh=offer.tariff_micro_per_kwh,
        tariff_currency=offer.tariff_currency if offer.tariff_micro_per_kwh is not None else None,
        pue_profile=offer.pue_profile,
        pue_milli=_declared_pue_milli(offer.pue_profile, offer.pue_milli),
        host_overhead_milli=offer.host_overhead_milli,
    )


def bare_site(region: str | None) -> SiteProfile:
    """Only a region: every factor takes its default."""
    return SiteProfile(region=region or None)


def site_json(site: SiteProfile) -> str:
    """The stored form of a site."""
    grid = None if site.grid_gco2_per_kwh is None else str(site.grid_gco2_per_kwh)
    return json.dumps(
        {
            "region": site.region,
            "tariff_micro_per_kwh": site.tariff_micro_per_kwh,
            "tariff_currency": site.tariff_currency,
            "pue_profile": site.pue_profile,
            "pue_milli": site.pue_milli,
            "host_overhead_milli": site.host_overhead_milli,
            "grid_gco2_per_kwh": grid,
            "grid_source": site.grid_source,
        },
        separators=(",", ":"),
    )


def site_from_json(text: str) -> SiteProfile:
    """A site stored by `site_json`."""
    data: dict[str, Any] = json.loads(text)
    grid = data.get("grid_gco2_per_kwh")
    return SiteProfile(
        region=data.get("region"),
        tariff_micro_per_kwh=data.get("tariff_micro_per_kwh"),
        tariff_currency=data.get("tariff_currency"),
        pue_profile=data.get("pue_profile"),
        pue_milli=data.get("pue_milli"),
        host_overhead_milli=data.get("host_overhead_milli"),
        grid_gco2_per_kwh=None if grid is None else Decimal(grid),
        grid_source=data.get("grid_source") or "",
    )
