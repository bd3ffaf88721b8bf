"""The energy price floor and `auto` prices, from a calibration.

Output tokens (per million, payment-token base units, rounded UP):

    J/token (calibration, at the offer's max_concurrency or the closest level)
      x host overhead x PUE              = wall J/token
      / 3,600,000                        = wall kWh/token
      x tariff (per kWh)                 = cost per token, tariff currency
      x base units per currency unit     (USD 1,000,000; else offer.base_units_per_currency_unit)
      x 1,000,000 tokens x (1 + margin)  -> ceil

Input tokens: the energy floor is 0. J/token is measured the way ML.ENERGY measures it,
window energy over *output* tokens, so prefill energy is already folded into the output
price, and per-request attribution (docs/energy.md) gives prompt tokens weight zero too.
Charging prompts for energy again would count prefill twice. The fold holds for prompts
like the calibration's; a provider serving very long prompts sets `price_in_per_mtok`
by hand (an explicit integer is always kept as is).

Arithmetic is exact (`fractions.Fraction` from decimal strings): no floats touch money.
The agent does not import `market`; the few reference figures it needs are copied below
with their sources (shared/data/pue.csv and energy_regions.csv).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from provider_agent.calibrate import (
    CalibratedLevel,
    Calibration,
    CalibrationError,
    load_calibration,
)
from provider_agent.config import AgentSettings

J_PER_KWH = 3_600_000
TOKENS_PER_PRICE_UNIT = 1_000_000
USD_BASE_UNITS = 1_000_000
"""Payment-token base units per US dollar (a 6-decimal stable token, 1 USD = 1 token)."""

PUE_PROFILES: dict[str, tuple[Decimal, str]] = {
    "industry_average": (
        Decimal("1.56"),
        "Uptime Institute global survey 2024 (1.55-1.59 since 2020)",
    ),
    "new_large_site": (Decimal("1.30"), "Uptime Institute (new large sites <= 1.3)"),
    "hyperscale_best": (Decimal("1.10"), "Google fleet Q2 2021"),
    "colocation": (Decimal("1.42"), "Equinix 2023"),
    "edge_or_home": (
        Decimal("1.00"),
        "no facility overhead beyond the rig (assumption; host counted separately)",
    ),
}
"""shared/data/pue.csv."""

REGION_TARIFFS: dict[str, tuple[Decimal, str, str]] = {
    "US-VA": (Decimal("0.0892"), "USD", "EIA Electric Power Annual 2023, industrial"),
    "US-TX": (Decimal("0.0660"), "USD", "EIA Electric Power Annual 2023, industrial"),
    "US-CA": (Decimal("0.1864"), "USD", "EIA Electric Power Annual 2023, industrial"),
    "US-WA": (Decimal("0.0635"), "USD", "EIA Electric Power Annual 2023, industrial"),
    "US-GA": (Decimal("0.0688"), "USD", "EIA Electric Power Annual 2023, industrial"),
    "US-IA": (Decimal("0.0691"), "USD", "EIA Electric Power Annual 2023, industrial"),
    "US-OR": (Decimal("0.0752"), "USD", "EIA Electric Power Annual 2023, industrial"),
    "US": (Decimal("0.080"), "USD", "approximate US industrial average 2023 (unverified)"),
    "DE": (Decimal("0.1765"), "EUR", "BDEW early 2024, new small/mid industry contracts"),
    "IE": (Decimal("0.256"), "EUR", "Eurostat H1 2024, non-household ex-VAT"),
    "FI": (Decimal("0.094"), "EUR", "Eurostat H1 2024, non-household ex-VAT"),
    "SE": (Decimal("0.094"), "EUR", "Eurostat H1 2024, non-household ex-VAT"),
    "EU": (Decimal("0.190"), "EUR", "Eurostat H2 2024, non-household ex-VAT"),
    "IS": (Decimal("0.043"), "USD", "Landsvirkjun quote reported by DCD (dated, ~2012)"),
    "CN": (Decimal("0.088"), "USD", "China Briefing 2024 (approximate)"),
}
"""shared/data/energy_regions.csv: regions with a known price (others have none)."""

INPUT_RULE = (
    "0: prefill energy is folded into output tokens (J/token = window energy / output"
    " tokens, as ML.ENERGY measures), so input tokens carry no energy floor"
)
UNMEASURED = (
    "no measured J/token: the floor cannot be computed; set prices by hand or calibrate"
    " on a GPU with NVML"
)


class PricingError(Exception):
    """The floor cannot be computed from what is configured and calibrated."""


@dataclass(frozen=True)
class Factor:
    """One factor of the floor: its value as text and where it came from."""

    name: str
    value: str
    origin: str


@dataclass(frozen=True)
class PriceFloor:
    """Minimum profitable prices (base units per million tokens) and how they were built."""

    price_out_per_mtok: int
    price_in_per_mtok: int
    level: CalibratedLevel
    factors: tuple[Factor, ...]


def floor_per_mtok(
    joules_per_token: Fraction | Decimal | int,
    host_overhead: Fraction | Decimal | int,
    pue: Fraction | Decimal | int,
    tariff_per_kwh: Fraction | Decimal | int,
    base_units_per_currency_unit: int,
    margin: Fraction | Decimal | int,
) -> int:
    """Base units per million output tokens, rounded up; exact rational arithmetic."""
    value = (
        Fraction(joules_per_token)
        * Fraction(host_overhead)
        * Fraction(pue)
        / J_PER_KWH
        * Fraction(tariff_per_kwh)
        * base_units_per_currency_unit
        * TOKENS_PER_PRICE_UNIT
        * (1 + Fraction(margin))
    )
    return math.ceil(value)


def _tariff(settings: AgentSettings) -> tuple[Decimal, str, str]:
    offer = settings.offer
    if offer.tariff is not None:
        return offer.tariff.per_kwh, offer.tariff.currency, "provider-declared (offer.tariff)"
    if offer.region is not None and offer.region in REGION_TARIFFS:
        price, currency, source = REGION_TARIFFS[offer.region]
        return price, currency, f"regional default {offer.region}: {source}"
    where = f"region {offer.region!r} has no known price" if offer.region else "no region"
    raise PricingError(
        f"no tariff: set offer.tariff (per_kwh, currency); {where} to take a default from"
    )


def _rate(settings: AgentSettings, currency: str) -> tuple[int, str]:
    configured = settings.offer.base_units_per_currency_unit
    if configured is not None:
        return configured, "provider-declared (offer.base_units_per_currency_unit)"
    if currency == "USD":
        return USD_BASE_UNITS, "1 USD = 1 payment token = 10^6 base units (6 decimals)"
    raise PricingError(
        f"the tariff is in {currency}: set offer.base_units_per_currency_unit (payment-token"
        f" base units per 1 {currency}) to convert it"
    )


def _fmt(value: Decimal | Fraction, places: int = 12) -> str:
    if isinstance(value, Fraction):
        value = Decimal(value.numerator) / Decimal(value.denominator)
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return text or "0"


def suggest(
    settings: AgentSettings, calibration: Calibration, margin: Decimal | None = None
) -> PriceFloor:
    """The floor at the offer's max_concurrency (or the closest calibrated level)."""
    offer = settings.offer
    margin = offer.auto_margin if margin is None else margin
    if margin < 0:
        raise PricingError("the margin cannot be negative")
    level = calibration.closest(offer.max_concurrency)
    jpt = level.joules_per_token
    if jpt is None:
        why = f" ({level.reason})" if level.reason else ""
        raise PricingError(f"{UNMEASURED}{why}")
    host = Decimal(str(offer.host_overhead))
    pue, pue_source = PUE_PROFILES[offer.pue_profile]
    tariff, currency, tariff_origin = _tariff(settings)
    rate, rate_origin = _rate(settings, currency)
    price_out = floor_per_mtok(jpt, host, pue, tariff, rate, margin)
    wall_j = Fraction(jpt) * Fraction(host) * Fraction(pue)
    kwh = wall_j / J_PER_KWH
    cost = kwh * Fraction(tariff)
    where = f"calibration {calibration.path or ''} at concurrency {level.concurrency}".strip()
    if level.concurrency != offer.max_concurrency:
        where += f" (closest to max_concurrency {offer.max_concurrency})"
    factors = (
        Factor("GPU J/token", _fmt(jpt, 9), f"{level.method}: {where}"),
        Factor("host overhead", _fmt(host), "offer.host_overhead"),
        Factor("PUE", _fmt(pue), f"profile {offer.pue_profile}: {pue_source}"),
        Factor("wall J/token", _fmt(wall_j, 9), "J/token x host overhead x PUE"),
        Factor("wall kWh/token", _fmt(kwh, 15), "wall J / 3,600,000"),
        Factor(f"tariff ({currency}/kWh)", _fmt(tariff), tariff_origin),
        Factor(f"cost per token ({currency})", _fmt(cost, 15), "kWh x tariff"),
        Factor(f"base units per {currency}", str(rate), rate_origin),
        Factor("tokens per price unit", f"{TOKENS_PER_PRICE_UNIT:,}", "prices are per 1M tokens"),
        Factor("margin", _fmt(margin), "--margin / offer.auto_margin"),
        Factor("output floor (base units / Mtok)", str(price_out), "product, rounded up"),
        Factor("input floor (base units / Mtok)", "0", INPUT_RULE),
    )
    return PriceFloor(price_out, 0, level, factors)


def resolve_prices(settings: AgentSettings, calibration: Calibration | None) -> tuple[int, int]:
    """(price_in, price_out) as integers: configured integers kept, "auto" replaced by the
    floor with `offer.auto_margin`; `PricingError` when "auto" cannot be resolved."""
    offer = settings.offer
    price_in, price_out = offer.price_in_per_mtok, offer.price_out_per_mtok
    if isinstance(price_in, int) and isinstance(price_out, int):
        return price_in, price_out
    if calibration is None:
        raise PricingError(
            'the offer\'s price is "auto" but there is no calibration: run `provider-agent'
            " calibrate`, or set price_in_per_mtok and price_out_per_mtok by hand"
        )
    try:
        floor = suggest(settings, calibration)
    except PricingError as exc:
        raise PricingError(f'cannot resolve "auto" prices: {exc}') from exc
    return (
        floor.price_in_per_mtok if price_in == "auto" else int(price_in),
        floor.price_out_per_mtok if price_out == "auto" else int(price_out),
    )


def with_resolved_prices(settings: AgentSettings) -> AgentSettings:
    """`settings` with "auto" prices replaced by integers (from data_dir's calibration)."""
    offer = settings.offer
    if offer.price_in_per_mtok != "auto" and offer.price_out_per_mtok != "auto":
        return settings
    try:
        calibration = load_calibration(settings.data_dir)
    except CalibrationError as exc:
        raise PricingError(f'cannot resolve "auto" prices: {exc}') from exc
    price_in, price_out = resolve_prices(settings, calibration)
    resolved = offer.model_copy(
        update={"price_in_per_mtok": price_in, "price_out_per_mtok": price_out}
    )
    return settings.model_copy(update={"offer": resolved})
