"""The energy chain of one receipt or statement, with exact arithmetic and each factor's origin.

GPU joules -> x host overhead -> x PUE -> kWh at the wall -> x tariff = energy cost, and
x grid intensity = gCO2. Every figure is a `Decimal` (money also as integer base units of
the payment token, rounded half up); nothing goes through a binary float. An unmeasured
figure makes every downstream figure None: it is never filled in with zero or a default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from market.energy.data import fx_rates, pue_profiles, regions

Method = Literal["measured", "estimated", "unmeasured"]
Origin = Literal["provider-declared", "regional-default", "measured"]

JOULES_PER_KWH = Decimal(3_600_000)
MILLI = Decimal(1000)
MICRO = Decimal(1_000_000)
DEFAULT_HOST_OVERHEAD = Decimal("1.4")
"""Host CPU/DRAM share over GPU energy, ~40 % (shared/data/README.md); used when undeclared."""
DEFAULT_PUE_PROFILE = "industry_average"
PAYMENT_TOKEN_PER_USD = Decimal(1)
"""The payment token is pegged to the US dollar: one token unit per USD."""
DEFAULT_RATES: dict[str, Decimal] = {
    currency: figure.value * PAYMENT_TOKEN_PER_USD for currency, figure in fx_rates().items()
}
"""Payment-token units per unit of the tariff currency: USD 1:1, EUR and NOK at the ECB
reference rates' 2024 annual averages (`data/fx_rates.csv`)."""


@dataclass(frozen=True)
class Factor:
    """One multiplier of the chain and where it came from."""

    name: str
    value: Decimal | None
    origin: Origin
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": None if self.value is None else str(self.value),
            "origin": self.origin,
            "source": self.source,
        }


@dataclass(frozen=True)
class EnergyCost:
    amount: Decimal
    currency: str
    base_units: int | None
    """In the payment token's base units; None when no rate converts the currency."""


@dataclass(frozen=True)
class EnergyChain:
    """All figures of one chain; None wherever the input was unmeasured or unknown."""

    method: Method
    gpu_joules: Decimal | None
    host_overhead: Factor
    pue: Factor
    wall_kwh: Decimal | None
    tariff: Factor | None
    energy_cost: EnergyCost | None
    grid_intensity: Factor | None
    gco2: Decimal | None
    region: str | None

    def factors(self) -> list[Factor]:
        found = [self.host_overhead, self.pue, self.tariff, self.grid_intensity]
        return [f for f in found if f is not None]


@dataclass(frozen=True)
class SiteProfile:
    """What a provider declared for its site (the Offer's columns); None: not declared."""

    region: str | None
    tariff_micro_per_kwh: int | None = None
    tariff_currency: str | None = None
    pue_profile: str | None = None
    pue_milli: int | None = None
    host_overhead_milli: int | None = None
    grid_gco2_per_kwh: Decimal | None = None
    """A grid intensity the provider measured (e.g. a PPA or live grid feed), else None."""
    grid_source: str = ""


def host_overhead_factor(site: SiteProfile) -> Factor:
    if site.host_overhead_milli is not None:
        value = Decimal(site.host_overhead_milli) / MILLI
        return Factor("host_overhead", value, "provider-declared", "offer.host_overhead_milli")
    return Factor(
        "host_overhead",
        DEFAULT_HOST_OVERHEAD,
        "regional-default",
        "host CPU/DRAM ~40 % over GPU energy (shared/data/README.md)",
    )


def pue_factor(site: SiteProfile) -> Factor:
    if site.pue_milli is not None:
        value = Decimal(site.pue_milli) / MILLI
        profile = f" (profile {site.pue_profile})" if site.pue_profile else ""
        return Factor("pue", value, "provider-declared", f"offer.pue_milli{profile}")
    default = pue_profiles()[site.pue_profile or DEFAULT_PUE_PROFILE]
    return Factor(
        "pue", default.pue.value, "regional-default", f"{default.profile}: {default.pue.source}"
    )


def tariff_factor(site: SiteProfile) -> Factor | None:
    if site.tariff_micro_per_kwh is not None and site.tariff_currency is not None:
        value = Decimal(site.tariff_micro_per_kwh) / MICRO
        return Factor(
            f"tariff_{site.tariff_currency}_per_kwh",
            value,
            "provider-declared",
            "offer.tariff_micro_per_kwh",
        )
    default = regions().get(site.region or "")
    if default is None or default.tariff is None or default.currency is None:
        return None
    figure = default.tariff
    return Factor(
        f"tariff_{default.currency}_per_kwh",
        figure.value,
        "regional-default",
        f"{figure.source} ({figure.year}, {default.region}; verified: {default.verified_note})",
    )


def grid_factor(site: SiteProfile) -> Factor | None:
    if site.grid_gco2_per_kwh is not None:
        return Factor("grid_gco2_per_kwh", site.grid_gco2_per_kwh, "measured", site.grid_source)
    default = regions().get(site.region or "")
    if default is None or default.grid_intensity is None:
        return None
    figure = default.grid_intensity
    return Factor(
        "grid_gco2_per_kwh",
        figure.value,
        "regional-default",
        f"{figure.source} ({figure.year}, {default.region})",
    )


def to_base_units(amount: Decimal, currency: str, decimals: int, rates: dict[str, Decimal]) -> int:
    """`amount` of `currency` in payment-token base units, rounded half up (KeyError: no rate)."""
    scaled = amount * rates[currency] * (Decimal(10) ** decimals)
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def energy_chain(
    method: Method,
    millijoules: int | None,
    site: SiteProfile,
    *,
    token_decimals: int = 6,
    rates: dict[str, Decimal] | None = None,
) -> EnergyChain:
    """The chain for `millijoules` of GPU energy (None or method "unmeasured": no figures)."""
    rates = DEFAULT_RATES if rates is None else rates
    host, pue = host_overhead_factor(site), pue_factor(site)
    tariff, grid = tariff_factor(site), grid_factor(site)
    if method == "unmeasured" or millijoules is None:
        return EnergyChain(
            "unmeasured", None, host, pue, None, tariff, None, grid, None, site.region
        )
    joules = Decimal(millijoules) / MILLI
    assert host.value is not None
    assert pue.value is not None
    wall_kwh = joules * host.value * pue.value / JOULES_PER_KWH
    cost = None
    if tariff is not None and tariff.value is not None:
        currency = tariff.name.removeprefix("tariff_").removesuffix("_per_kwh")
        amount = wall_kwh * tariff.value
        base = to_base_units(amount, currency, token_decimals, rates) if currency in rates else None
        cost = EnergyCost(amount, currency, base)
    gco2 = None if grid is None or grid.value is None else wall_kwh * grid.value
    return EnergyChain(method, joules, host, pue, wall_kwh, tariff, cost, grid, gco2, site.region)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def energy_block(chain: EnergyChain) -> dict[str, Any]:
    """The buyer-facing `energy` block of a response or receipt (decimals as strings)."""
    cost = chain.energy_cost
    return {
        "method": chain.method,
        "gpu_joules": _text(chain.gpu_joules),
        "host_overhead": _text(chain.host_overhead.value),
        "pue": _text(chain.pue.value),
        "wall_kwh": _text(chain.wall_kwh),
        "energy_cost": None
        if cost is None
        else {"amount": str(cost.amount), "currency": cost.currency, "base_units": cost.base_units},
        "gco2": _text(chain.gco2),
        "region": chain.region,
        "factors": [f.as_dict() for f in chain.factors()],
    }


@dataclass(frozen=True)
class StatementTotals:
    """Sums over a statement's receipts; unmeasured receipts are counted, not summed."""

    receipts: int
    measured: int
    estimated: int
    unmeasured: int
    output_tokens_metered: int
    """Output tokens of the receipts with energy (measured or estimated)."""
    output_tokens_unmetered: int
    gpu_joules: Decimal
    wall_kwh: Decimal
    energy_cost: dict[str, Decimal]
    """By currency."""
    energy_cost_base_units: int
    gco2: Decimal
    receipts_without_cost: int
    receipts_without_gco2: int

    @property
    def joules_per_token(self) -> Decimal | None:
        """GPU J per output token over the metered receipts only (None if none)."""
        if self.output_tokens_metered == 0:
            return None
        return self.gpu_joules / self.output_tokens_metered

    @property
    def gco2_per_mtok(self) -> Decimal | None:
        tokens = self.output_tokens_metered - self.receipts_without_gco2_tokens
        return None if tokens <= 0 else self.gco2 * 1_000_000 / tokens

    receipts_without_gco2_tokens: int = 0


def aggregate(items: Iterable[tuple[EnergyChain, int]]) -> StatementTotals:
    """Totals over (chain, output tokens) pairs of one statement.

    Unmeasured receipts are counted and their tokens kept apart; they contribute nothing to
    the sums or to the per-token figures (their energy is unknown, not zero).
    """
    counts = {"measured": 0, "estimated": 0, "unmeasured": 0}
    metered = unmetered = no_cost = no_gco2 = no_gco2_tokens = base = 0
    joules = kwh = gco2 = Decimal(0)
    costs: dict[str, Decimal] = {}
    for chain, tokens in items:
        counts[chain.method] += 1
        if chain.gpu_joules is None or chain.wall_kwh is None:
            unmetered += tokens
            continue
        metered += tokens
        joules += chain.gpu_joules
        kwh += chain.wall_kwh
        if chain.energy_cost is None:
            no_cost += 1
        else:
            cost = chain.energy_cost
            costs[cost.currency] = costs.get(cost.currency, Decimal(0)) + cost.amount
            base += cost.base_units or 0
        if chain.gco2 is None:
            no_gco2 += 1
            no_gco2_tokens += tokens
        else:
            gco2 += chain.gco2
    return StatementTotals(
        receipts=sum(counts.values()),
        measured=counts["measured"],
        estimated=counts["estimated"],
        unmeasured=counts["unmeasured"],
        output_tokens_metered=metered,
        output_tokens_unmetered=unmetered,
        gpu_joules=joules,
        wall_kwh=kwh,
        energy_cost=costs,
        energy_cost_base_units=base,
        gco2=gco2,
        receipts_without_cost=no_cost,
        receipts_without_gco2=no_gco2,
        receipts_without_gco2_tokens=no_gco2_tokens,
    )


def per_mtok(chains: Sequence[tuple[EnergyChain, int]]) -> dict[str, Decimal | None]:
    """Routing figures over recent receipts: gco2_per_mtok and energy cost (base units)."""
    totals = aggregate(chains)
    tokens = totals.output_tokens_metered
    cost = None
    if tokens and totals.receipts_without_cost == 0:
        cost = Decimal(totals.energy_cost_base_units) * 1_000_000 / tokens
    return {
        "joules_per_token": totals.joules_per_token,
        "gco2_per_mtok": totals.gco2_per_mtok,
        "energy_cost_per_mtok": cost,
    }
