"""The pure parts of the demo: amounts, prices and the energy block, as a person reads them.

No I/O here, so the unit tests check every rule to the base unit without a chain or vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

USD = 10**6
"""Payment-token base units per tUSD (6 decimals)."""

NOT_MEASURED = "not measured"


def tusd(amount: int) -> str:
    """`1.234567 tUSD (1,234,567 base units)`: both, so nothing is lost to rounding."""
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), USD)
    return f"{sign}{whole:,}.{frac:06d} tUSD ({amount:,} base units)"


def charge_for(
    prompt_tokens: int, completion_tokens: int, price_in_per_mtok: int, price_out_per_mtok: int
) -> int:
    """Price of the tokens in base units, rounded up to the base unit (never undercharged)."""
    numerator = prompt_tokens * price_in_per_mtok + completion_tokens * price_out_per_mtok
    return -(-numerator // 1_000_000)


def fee_for(charge: int, fee_bps: int) -> int:
    """The protocol's fee on a charge, rounded down (the provider keeps the remainder)."""
    return charge * fee_bps // 10_000


def _first(block: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if block.get(key) is not None:
            return block[key]
    return None


def _number(value: Any, unit: str) -> str:
    if value is None:
        return NOT_MEASURED
    return f"{Decimal(str(value)).normalize():f} {unit}"


def energy_rows(energy: Mapping[str, Any] | None, reason: str | None) -> list[tuple[str, str]]:
    """Rows for the response's `energy` block: method (with the reason when unmeasured),
    joules, kWh at the wall, energy cost and gCO2. A figure the block leaves null or out is
    shown as "not measured", never as 0."""
    block: Mapping[str, Any] = energy or {}
    method = str(block.get("method") or "unmeasured")
    why = reason or _first(block, "reason", "basis")
    shown = f"{method} ({why})" if method == "unmeasured" and why else method
    if method != "unmeasured" and block.get("basis"):
        shown = f"{method} ({block['basis']})"
    cost = _first(block, "energy_cost", "cost")
    if isinstance(cost, Mapping):
        cost_text = f"{cost.get('amount')} {cost.get('currency')}"
        if cost.get("base_units") is not None:
            cost_text += f" ({int(cost['base_units']):,} base units)"
    else:
        cost_text = NOT_MEASURED if cost is None else str(cost)
    return [
        ("energy method", shown),
        ("GPU energy", _number(_first(block, "joules", "gpu_joules"), "J")),
        ("energy at the wall", _number(_first(block, "wall_kwh", "kwh"), "kWh")),
        ("energy cost", cost_text),
        ("emissions", _number(_first(block, "gco2", "gco2e"), "gCO2")),
    ]


def short(text: str, limit: int = 240) -> str:
    """`text` on one line, cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
