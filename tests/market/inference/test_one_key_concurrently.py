"""Many requests on one API key at once, on PostgreSQL: opening a job locks the key's row and
then the buyer's ledger accounts, and charging must take them in the same order, or two
requests deadlock (each holding the row the other waits for) and end in 500s with holds
left open."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from market.buyers.schemas import ApiKeyBudgets
from market.buyers.service import create_api_key, get_buyer
from market.db import session_scope
from market.jobs.models import Job, JobStatus
from market.ledger import service as ledger
from tests.market.inference.conftest import PROVIDER_A, Market
from tests.market.inference.servers import MODEL, Agent

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def _burst(url: str, key: str, n: int) -> Counter[int]:
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> int:
            response = await client.post(url, json=BODY, headers={"authorization": f"Bearer {key}"})
            return response.status_code

        return Counter(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.parametrize("budgeted", [False, True], ids=["no budget", "money budget"])
def test_concurrent_requests_on_one_key_all_settle_on_postgresql(
    pg_market: Market, agents: dict[str, Agent], budgeted: bool
) -> None:
    market = pg_market
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    key = market.api_key
    if budgeted:
        with session_scope(market.sessions) as session:
            buyer = get_buyer(session, market.buyer)
            created = create_api_key(session, buyer, "b", ApiKeyBudgets(budget_money=10**12))
            key = created.secret.get_secret_value()
    statuses: Counter[int] = Counter()
    for _ in range(3):
        statuses += asyncio.run(_burst(f"{market.served.url}/v1/chat/completions", key, 16))
    assert statuses == Counter({200: 48})
    with session_scope(market.sessions) as session:
        ledger.check_ledger(session)
        assert ledger.statement(session, market.buyer).held == 0
        routed = select(func.count()).select_from(Job).where(Job.status == JobStatus.ROUTED)
        assert session.scalar(routed) == 0
