"""Per-API-key budgets on the request path: money, carbon, and keys without budgets."""

from __future__ import annotations

import dataclasses

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from market.buyers import budgets
from market.buyers.models import ApiKey
from market.buyers.schemas import ApiKeyBudgets, ApiKeyUpdate
from market.buyers.service import create_api_key, get_buyer, update_api_key
from market.db import session_scope
from market.energy.accounting import SiteProfile, energy_chain
from market.jobs.models import Job, Receipt
from tests.market.inference.conftest import (
    METERED_STEP_MJ,
    PROVIDER_A,
    PROVIDER_METERED,
    Market,
)
from tests.market.inference.servers import MODEL, Agent

PRICE = 2_000_000
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
SITE = SiteProfile(region="US-VA", pue_milli=1200, host_overhead_milli=1300)
MEASURED = energy_chain("measured", METERED_STEP_MJ, SITE)
"""What one request on the metered agent measures, at its site."""
PER_REQUEST_MG = budgets.gco2_mg(MEASURED)


def _offers(market: Market, agents: dict[str, Agent], joules_per_token: float = 1.0) -> None:
    """A cheap unmeasured offer (routing's first choice) and a dearer measured one."""
    cheap = dataclasses.replace(agents[PROVIDER_A].offer(PRICE // 2, PRICE // 2), site=SITE)
    metered = dataclasses.replace(
        agents[PROVIDER_METERED].offer(PRICE, PRICE, "US-VA"),
        site=SITE,
        joules_per_token=joules_per_token,
    )
    market.routing.pin([cheap, metered])


def _key(market: Market, **limits: int) -> tuple[int, str]:
    with session_scope(market.sessions) as session:
        buyer = get_buyer(session, market.buyer)
        created = create_api_key(session, buyer, "budgeted", ApiKeyBudgets(**limits))
    return created.key.id, created.secret.get_secret_value()


def _key_row(market: Market, key_id: int) -> ApiKey:
    with session_scope(market.sessions) as session:
        key = session.get(ApiKey, key_id)
        assert key is not None
        session.expunge(key)
    return key


def _chat(market: Market, secret: str, max_tokens: int = 16) -> dict[str, object]:
    with openai.OpenAI(base_url=market.url, api_key=secret, max_retries=0) as client:
        completion = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=max_tokens
        )
    return completion.model_extra or {}


def _refused(market: Market, secret: str, max_tokens: int = 16) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(market, secret, max_tokens)
    return caught.value


def _provider(extra: dict[str, object]) -> str:
    provider = extra["provider"]
    assert isinstance(provider, dict)
    return str(provider["address"])


def _last_job(market: Market, key_id: int) -> tuple[int, int]:
    """(hold, charge) of the key's latest job."""
    with session_scope(market.sessions) as session:
        jobs = session.query(Job).filter(Job.api_key_id == key_id).order_by(Job.created_at).all()
        job = jobs[-1]
        receipt = session.get(Receipt, job.id)
        assert receipt is not None
        return job.hold_amount, receipt.charge


def test_a_key_without_budgets_is_unaffected_and_counts_its_spend(
    market: Market, agents: dict[str, Agent]
) -> None:
    _offers(market, agents)
    key_id, secret = _key(market)
    for _ in range(2):
        assert _provider(_chat(market, secret)) == PROVIDER_A  # the cheap, unmeasured offer
    _, charge = _last_job(market, key_id)
    key = _key_row(market, key_id)
    assert (key.spent_money, key.spent_wall_mwh, key.spent_gco2_mg) == (2 * charge, 0, 0)


def test_a_money_budget_is_refused_once_spent_plus_the_hold_would_exceed_it(
    market: Market, agents: dict[str, Agent]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(PRICE, PRICE)])
    key_id, secret = _key(market)
    _chat(market, secret)
    hold, charge = _last_job(market, key_id)
    assert 0 < charge < hold
    limit = 2 * charge + hold  # room for two more requests' worst case, not three
    with session_scope(market.sessions) as session:
        buyer = get_buyer(session, market.buyer)
        update_api_key(session, buyer, key_id, ApiKeyUpdate(budget_money=limit))
    _chat(market, secret)  # spent charge + hold <= limit
    _chat(market, secret)  # spent 2 charge + hold == limit: still allowed
    assert _key_row(market, key_id).spent_money == 3 * charge
    error = _refused(market, secret)
    assert (error.status_code, error.code) == (402, "budget_exceeded")
    assert error.type == "insufficient_quota"
    assert f"money budget is exceeded: {3 * charge} base units spent of a {limit} " in (
        error.message
    )
    assert f"may cost up to {hold}" in error.message
    assert _key_row(market, key_id).spent_money == 3 * charge
    # The buyer's other key, without a budget, still works.
    _chat(market, market.api_key)


def test_a_carbon_budget_routes_to_the_metered_agent_and_is_refused_once_spent(
    market: Market, agents: dict[str, Agent]
) -> None:
    _offers(market, agents)
    assert PER_REQUEST_MG > 0
    worst = budgets.estimate(16, 1.0, SITE).gco2_mg
    assert worst is not None
    limit = PER_REQUEST_MG + worst  # one spent + one worst case fits exactly; two spent do not
    key_id, secret = _key(market, budget_gco2_mg=limit)
    for count in (1, 2):
        assert _provider(_chat(market, secret)) == PROVIDER_METERED
        key = _key_row(market, key_id)
        assert key.spent_gco2_mg == count * PER_REQUEST_MG
        assert key.spent_wall_mwh == count * budgets.wall_mwh(MEASURED)
    error = _refused(market, secret)
    assert (error.status_code, error.code) == (402, "budget_exceeded")
    spent = 2 * PER_REQUEST_MG
    assert error.message.removeprefix("Error code: 402 - ").startswith(
        f"This API key's carbon budget is exceeded: {spent} mg CO2 spent of a {limit} mg CO2 "
        "limit. "
    )


def test_an_energy_budget_refuses_a_worst_case_over_it_and_unmeasured_offers(
    market: Market, agents: dict[str, Agent]
) -> None:
    _offers(market, agents, joules_per_token=1000.0)  # 16 tokens: 16 kJ, ~6.9 Wh at the wall
    worst = budgets.estimate(16, 1000.0, SITE)
    assert worst.wall_mwh is not None
    assert worst.wall_mwh > 1000
    key_id, secret = _key(market, budget_wall_mwh=1000)
    error = _refused(market, secret)
    assert (error.status_code, error.code) == (402, "budget_exceeded")
    assert "energy budget is exceeded: 0 mWh spent of a 1000 mWh limit" in error.message
    assert f"up to {worst.wall_mwh} mWh on this offer" in error.message
    market.routing.pin([agents[PROVIDER_A].offer(PRICE, PRICE)])  # unmeasured only
    error = _refused(market, secret)
    assert (error.status_code, error.code) == (503, "no_provider_available")
    assert _key_row(market, key_id).spent_money == 0
