"""`GET /metrics`: the process's metrics and the market's state, read at each scrape."""

from __future__ import annotations

from datetime import timedelta

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from market.db import session_scope, utcnow
from market.settlement.models import Epoch, EpochStatus
from tests.market.inference.conftest import PROVIDER_A, Market
from tests.market.inference.servers import MODEL, Agent
from tests.support.openai_upstream import UpstreamProcess


def _scrape(market: Market) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{market.served.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _epoch(number: int, status: EpochStatus, age_s: float) -> Epoch:
    return Epoch(
        number=number,
        status=status,
        receipts_root="0x" + "00" * 32,
        receipt_count=0,
        total_debit=0,
        total_credit=0,
        fee=0,
        created_at=utcnow() - timedelta(seconds=age_s),
    )


def test_the_market_state_is_read_at_each_scrape(market: Market, agents: dict[str, Agent]) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000, 2_000)])
    before = _scrape(market)
    assert before[("process_cpu_seconds_total", ())] > 0
    assert before[("market_offers_online", (("model", MODEL),))] == 1
    assert before[("market_receipts_unsettled", ())] == 0
    assert before[("market_epoch_unsettled_age_seconds", ())] == 0

    with openai.OpenAI(base_url=market.url, api_key=market.api_key) as client:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    with session_scope(market.sessions) as session:
        session.add(_epoch(1, EpochStatus.SETTLED, 600))
        session.add(_epoch(2, EpochStatus.SUBMITTED, 120))  # e.g. its settlement reverts
    after = _scrape(market)

    assert after[("market_requests_in_flight", (("model", MODEL),))] == 0
    assert after[("market_receipts_unsettled", ())] == 1
    assert after[("market_epochs", (("status", "settled"),))] == 1
    assert after[("market_epochs", (("status", "submitted"),))] == 1
    assert after[("market_epochs", (("status", "pending"),))] == 0
    assert after[("market_epoch_last_settled", ())] == 1
    assert 120 <= after[("market_epoch_unsettled_age_seconds", ())] < 180


def test_open_jobs_are_counted_while_they_run(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000, 2_000)])
    upstream.control(completion_tokens=20, delay_ms=50)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {market.api_key}"}
    with httpx.stream("POST", f"{market.url}/chat/completions", json=body, headers=headers) as r:
        lines = r.iter_lines()
        next(lines)  # the stream has started: its job is open
        during = _scrape(market)
        assert "data: [DONE]" in list(lines)
    after = _scrape(market)
    assert during[("market_jobs_open", ())] == 1
    assert 0 <= during[("market_jobs_open_oldest_age_seconds", ())] < 10
    assert during[("market_requests_in_flight", (("model", MODEL),))] == 1
    assert after[("market_jobs_open", ())] == 0
    assert after[("market_jobs_open_oldest_age_seconds", ())] == 0
