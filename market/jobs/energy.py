"""Energy figures of stored receipts: each receipt's chain, and a statement's totals.

A receipt's chain is its GPU millijoules at the site stored with it (the routed offer's, see
`market.providers.site`; each distinct site is one row of `energy_sites`, which receipts
name by id); receipts stored before sites were kept use `fallback` (the provider's current
offer, else the region alone). Totals come from
`market.energy.accounting.aggregate`: unmeasured receipts are counted, never summed as 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field

from market.energy.accounting import (
    EnergyChain,
    Method,
    SiteProfile,
    StatementTotals,
    aggregate,
    energy_block,
    energy_chain,
)
from market.jobs.models import Receipt
from market.providers.site import bare_site, site_from_json


def energy_method(method: str) -> Method:
    """A stored energy method as the accounting chain knows it (anything else: unmeasured)."""
    if method == "measured":
        return "measured"
    if method == "estimated":
        return "estimated"
    return "unmeasured"


@lru_cache(maxsize=256)
def _site(text: str) -> SiteProfile:
    """A stored site's profile (profiles are frozen; a market has few distinct sites)."""
    return site_from_json(text)


def site_chain(
    method: str, millijoules: int | None, site: str | None, fallback: SiteProfile | None = None
) -> EnergyChain:
    """The accounting chain of a receipt's energy at `site` (its JSON; None: `fallback`,
    else the region alone)."""
    if site is not None:
        profile = _site(site)
    else:
        profile = fallback if fallback is not None else bare_site(None)
    return energy_chain(energy_method(method), millijoules, profile)


def receipt_chain(receipt: Receipt, fallback: SiteProfile | None = None) -> EnergyChain:
    """The accounting chain of one stored receipt."""
    return site_chain(receipt.energy_method, receipt.energy_mj, receipt.energy_site, fallback)


def buyer_energy(chain: EnergyChain, millijoules: int | None, basis: str | None) -> dict[str, Any]:
    """The `energy` block buyers see for one request (docs/energy-accounting.md): the
    receipt's GPU energy (`joules`, null when unmeasured; `method`, `basis`) and its whole
    accounting chain at the routed offer's site. Unmeasured: every figure is null, never 0."""
    joules = None if millijoules is None or chain.gpu_joules is None else millijoules / 1000
    return {"method": chain.method, "joules": joules, "basis": basis, **energy_block(chain)}


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


class EnergySummary(BaseModel):
    """Energy over a set of receipts. Decimals are strings; sums cover metered receipts only
    (measured or estimated), unmeasured ones are counted and their tokens kept apart."""

    requests: int
    measured: int
    estimated: int
    unmeasured: int
    output_tokens_metered: int
    output_tokens_unmetered: int
    gpu_joules: str = Field(description="GPU joules over metered receipts.")
    wall_kwh: str = Field(description="x host overhead x PUE, in kWh.")
    energy_cost: dict[str, str] = Field(description="By tariff currency.")
    energy_cost_base_units: int = Field(description="In payment-token base units.")
    gco2: str
    joules_per_token: str | None = Field(description="GPU J per metered output token.")
    gco2_per_mtok: str | None
    receipts_without_cost: int = Field(description="Metered, but no tariff or no rate.")
    receipts_without_gco2: int = Field(description="Metered, but no grid intensity.")

    @classmethod
    def of(cls, totals: StatementTotals) -> EnergySummary:
        """From `aggregate`'s totals."""
        return cls(
            requests=totals.receipts,
            measured=totals.measured,
            estimated=totals.estimated,
            unmeasured=totals.unmeasured,
            output_tokens_metered=totals.output_tokens_metered,
            output_tokens_unmetered=totals.output_tokens_unmetered,
            gpu_joules=str(totals.gpu_joules),
            wall_kwh=str(totals.wall_kwh),
            energy_cost={k: str(v) for k, v in sorted(totals.energy_cost.items())},
            energy_cost_base_units=totals.energy_cost_base_units,
            gco2=str(totals.gco2),
            joules_per_token=_text(totals.joules_per_token),
            gco2_per_mtok=_text(totals.gco2_per_mtok),
            receipts_without_cost=totals.receipts_without_cost,
            receipts_without_gco2=totals.receipts_without_gco2,
        )


def summarize(
    receipts: Iterable[Receipt], fallback: dict[str, SiteProfile] | None = None
) -> EnergySummary:
    """The energy section over `receipts` (`fallback`: site by provider, for old receipts)."""
    sites = fallback or {}
    pairs = [
        (receipt_chain(r, sites.get(r.provider_address)), r.completion_tokens) for r in receipts
    ]
    return EnergySummary.of(aggregate(pairs))
