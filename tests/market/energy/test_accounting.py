"""The energy chain with exact figures, unmeasured propagation and factor origins."""

from __future__ import annotations

from decimal import Decimal

from market.energy.accounting import (
    DEFAULT_RATES,
    SiteProfile,
    aggregate,
    energy_block,
    energy_chain,
    per_mtok,
    to_base_units,
)
from market.energy.data import fx_rates, gpus, mlenergy_configs, pue_profiles, regions

VA = SiteProfile(region="US-VA", pue_milli=1560, host_overhead_milli=1400)


def test_chain_exact_figures_us_va() -> None:
    chain = energy_chain("measured", 1_000_000, VA)  # 1,000 J
    assert chain.gpu_joules == Decimal(1000)
    assert chain.wall_kwh == Decimal(2184) / Decimal(3_600_000)
    assert chain.wall_kwh == Decimal("0.0006066666666666666666666666667")
    assert chain.energy_cost is not None
    assert chain.energy_cost.currency == "USD"
    assert chain.energy_cost.amount == chain.wall_kwh * Decimal("0.0892")
    assert chain.energy_cost.base_units == 54  # 0.0000541147 USD = 54.11 tUSD base units
    assert chain.gco2 == chain.wall_kwh * 245
    assert str(chain.gco2)[:10] == "0.14863333"


def test_origins() -> None:
    chain = energy_chain("measured", 1_000_000, VA)
    origins = {f.name: (f.origin, f.source) for f in chain.factors()}
    assert origins["host_overhead"][0] == "provider-declared"
    assert origins["pue"][0] == "provider-declared"
    assert origins["tariff_USD_per_kwh"] == (
        "regional-default",
        "EIA Electric Power Annual 2023 (2023, US-VA; verified: yes)",
    )
    assert origins["grid_gco2_per_kwh"] == (
        "regional-default",
        "EPA eGRID2023 (state) (2023, US-VA)",
    )
    declared = SiteProfile(
        region="DE",
        tariff_micro_per_kwh=150_000,
        tariff_currency="EUR",
        grid_gco2_per_kwh=Decimal(100),
        grid_source="PPA meter",
    )
    chain = energy_chain("estimated", 3_600_000, declared)
    names = {f.name: f for f in chain.factors()}
    assert names["tariff_EUR_per_kwh"].origin == "provider-declared"
    assert names["tariff_EUR_per_kwh"].value == Decimal("0.15")
    assert names["grid_gco2_per_kwh"].origin == "measured"
    assert names["pue"].origin == "regional-default"
    assert names["pue"].value == Decimal("1.56")
    assert chain.energy_cost is not None
    # 0.002184 kWh x 0.15 EUR = 0.0003276 EUR x 1.0824 USD/EUR = 0.00035459424 USD
    # = 354.59424 base units -> 355
    assert chain.energy_cost.base_units == 355
    assert chain.wall_kwh == Decimal("0.002184")  # 3,600 J x 1.4 x 1.56 / 3.6 MJ


def test_fx_rates_are_the_ecb_2024_averages() -> None:
    rates = fx_rates()
    assert rates["USD"].value == Decimal(1)
    assert rates["EUR"].value == Decimal("1.0824")
    assert rates["EUR"].year == 2024
    assert "ECB" in rates["EUR"].source
    assert rates["NOK"].value == (Decimal("1.0824") / Decimal("11.6290")).quantize(
        Decimal("0.00000001")
    )
    assert {
        "USD": Decimal(1),
        "EUR": Decimal("1.0824"),
        "NOK": Decimal("0.09307765"),
    } == DEFAULT_RATES
    # Every tariff currency of the regional defaults now converts.
    assert {r.currency for r in regions().values() if r.currency} <= set(DEFAULT_RATES)


def test_eur_region_cost_in_base_units() -> None:
    # Germany: 0.1765 EUR/kWh (BDEW 2024), PUE 1.2 and host 1.4 declared.
    site = SiteProfile(region="DE", pue_milli=1200, host_overhead_milli=1400)
    chain = energy_chain("measured", 15_000_000, site)  # 15,000 J
    assert chain.wall_kwh == Decimal("0.007")  # 15,000 x 1.4 x 1.2 / 3.6e6
    assert chain.energy_cost is not None
    assert chain.energy_cost.currency == "EUR"
    assert chain.energy_cost.amount == Decimal("0.0012355")  # 0.007 x 0.1765
    # 0.0012355 EUR x 1.0824 = 0.0013373052 USD = 1,337.3052 base units -> 1,337
    assert chain.energy_cost.base_units == 1337


def test_base_units_round_half_up() -> None:
    rates = {"EUR": Decimal("1.0824")}
    # 0.0000005 EUR x 1.0824 = 0.0000005412 -> 0.5412 units -> 1
    assert to_base_units(Decimal("0.0000005"), "EUR", 6, rates) == 1
    # exactly half a unit rounds up: 0.0000025 USD = 2.5 units -> 3
    assert to_base_units(Decimal("0.0000025"), "USD", 6, DEFAULT_RATES) == 3
    # NOK: 100 NOK x 0.09307765 = 9.307765 USD = 9,307,765 units
    assert to_base_units(Decimal(100), "NOK", 6, DEFAULT_RATES) == 9_307_765


def test_unmeasured_is_none_everywhere() -> None:
    chain = energy_chain("unmeasured", None, VA)
    block = energy_block(chain)
    for key in ("gpu_joules", "wall_kwh", "energy_cost", "gco2"):
        assert block[key] is None
    assert block["method"] == "unmeasured"
    assert energy_chain("measured", None, VA).gco2 is None


def test_unknown_region_leaves_cost_and_carbon_unknown() -> None:
    chain = energy_chain("measured", 1_000, SiteProfile(region="IN"))
    assert chain.energy_cost is None  # India has no price in the data
    assert chain.gco2 is not None
    chain = energy_chain("measured", 1_000, SiteProfile(region=None))
    assert chain.energy_cost is None
    assert chain.gco2 is None


def test_energy_block_shape() -> None:
    block = energy_block(energy_chain("measured", 1_000_000, VA))
    assert block["energy_cost"] == {
        "amount": str(Decimal(2184) / Decimal(3_600_000) * Decimal("0.0892")),
        "currency": "USD",
        "base_units": 54,
    }
    assert block["region"] == "US-VA"
    assert block["pue"] == "1.56"
    assert [f["name"] for f in block["factors"]] == [
        "host_overhead",
        "pue",
        "tariff_USD_per_kwh",
        "grid_gco2_per_kwh",
    ]


def test_aggregate_excludes_unmeasured() -> None:
    measured = energy_chain("measured", 1_000_000, VA)
    items = [(measured, 100), (measured, 300), (energy_chain("unmeasured", None, VA), 50)]
    totals = aggregate(items)
    assert (totals.receipts, totals.measured, totals.unmeasured) == (3, 2, 1)
    assert totals.output_tokens_metered == 400
    assert totals.output_tokens_unmetered == 50
    assert totals.gpu_joules == Decimal(2000)
    assert totals.joules_per_token == Decimal(5)
    assert totals.energy_cost_base_units == 108
    figures = per_mtok(items)
    assert figures["energy_cost_per_mtok"] == Decimal(270_000)
    assert aggregate([]).joules_per_token is None


def test_data_loaded_with_sources() -> None:
    assert len(mlenergy_configs()) == 1029
    va = regions()["US-VA"]
    assert va.tariff is not None
    assert va.tariff.value == Decimal("0.0892")
    assert va.tariff.verified
    us = regions()["US"]
    assert us.tariff is not None
    assert not us.tariff.verified
    assert pue_profiles()["industry_average"].pue.value == Decimal("1.56")
    assert gpus()["H100-SXM"].tdp_w == 700
