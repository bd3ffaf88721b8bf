"""The energy chain in responses (JSON and streamed) and in buyer and provider statements."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from market.energy.accounting import SiteProfile
from tests.market.inference.conftest import (
    METERED_STEP_MJ,
    PROVIDER_A,
    PROVIDER_METERED,
    Market,
)
from tests.market.inference.servers import MODEL, Agent

PRICE = 2_000_000
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
# Declared: 0.10 USD/kWh, PUE 1.2, host overhead 1.3, in US-VA (grid intensity by default).
SITE = SiteProfile(
    region="US-VA",
    tariff_micro_per_kwh=100_000,
    tariff_currency="USD",
    pue_profile="colocation",
    pue_milli=1200,
    host_overhead_milli=1300,
)
JOULES = Decimal(METERED_STEP_MJ) / 1000
WALL_KWH = JOULES * Decimal("1.3") * Decimal("1.2") / Decimal(3_600_000)


def _metered(market: Market, agents: dict[str, Agent]) -> None:
    offer = dataclasses.replace(agents[PROVIDER_METERED].offer(PRICE, PRICE, "US-VA"), site=SITE)
    market.routing.pin([offer])


def _check_block(energy: dict[str, Any]) -> None:
    assert (energy["method"], energy["joules"], energy["region"]) == ("measured", 250.0, "US-VA")
    assert Decimal(energy["gpu_joules"]) == JOULES
    assert (energy["host_overhead"], energy["pue"]) == ("1.3", "1.2")
    assert Decimal(energy["wall_kwh"]) == WALL_KWH
    cost = energy["energy_cost"]
    assert (cost["currency"], Decimal(cost["amount"])) == ("USD", WALL_KWH * Decimal("0.1"))
    assert cost["base_units"] == 11  # 0.0000108333 USD = 10.83 tUSD base units, half up
    assert Decimal(energy["gco2"]) > 0
    origins = {f["name"]: f["origin"] for f in energy["factors"]}
    assert origins == {
        "host_overhead": "provider-declared",
        "pue": "provider-declared",
        "tariff_USD_per_kwh": "provider-declared",
        "grid_gco2_per_kwh": "regional-default",
    }
    assert all(f["source"] for f in energy["factors"])


def test_a_measured_response_carries_the_whole_chain(
    market: Market, agents: dict[str, Agent]
) -> None:
    _metered(market, agents)
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert completion.usage is not None
    energy = (completion.model_extra or {})["energy"]
    assert (completion.usage.model_extra or {})["energy"] == energy
    _check_block(energy)


def test_the_streamed_usage_chunk_carries_the_whole_chain(
    market: Market, agents: dict[str, Agent]
) -> None:
    _metered(market, agents)
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = list(stream)[-1]
    assert last.usage is not None
    energy = (last.model_extra or {})["energy"]
    assert (last.usage.model_extra or {})["energy"] == energy
    _check_block(energy)


def test_statements_sum_energy_and_keep_unmeasured_apart(
    market: Market, agents: dict[str, Agent]
) -> None:
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    _metered(market, agents)
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    market.routing.pin([agents[PROVIDER_A].offer(PRICE, PRICE)])
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)

    response = httpx.get(
        f"{market.served.url}/buyers/{market.buyer}/statement",
        headers={"Authorization": f"Bearer {market.api_key}"},
    )
    assert response.status_code == 200, response.text
    energy = response.json()["energy"]
    assert (energy["requests"], energy["measured"], energy["unmeasured"]) == (3, 2, 1)
    assert Decimal(energy["gpu_joules"]) == 2 * JOULES
    assert Decimal(energy["wall_kwh"]) == 2 * WALL_KWH
    assert energy["energy_cost_base_units"] == 22
    assert energy["output_tokens_unmetered"] > 0

    statement = httpx.get(f"{market.served.url}/providers/{PROVIDER_METERED}/statement").json()
    totals = statement["totals"]
    assert totals["requests"] == 2
    assert totals["revenue_unmeasured"] == 0
    assert totals["energy_margin"] == totals["revenue_metered"] - 22
    [line] = statement["lines"]
    assert (line["model"], line["epoch"]) == (MODEL, None)

    unmeasured = httpx.get(f"{market.served.url}/providers/{PROVIDER_A}/statement").json()
    totals = unmeasured["totals"]
    assert totals["energy"]["unmeasured"] == 1
    assert totals["energy_margin"] is None  # unknown, not revenue - 0
    assert totals["revenue_unmeasured"] == totals["revenue"] > 0
