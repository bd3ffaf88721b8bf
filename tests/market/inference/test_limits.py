"""Bad input: oversized bodies, absurd token limits, and other buyers' jobs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from market.db import session_scope
from market.inference.limits import MAX_BODY_BYTES
from market.ledger import service as ledger
from tests.market.inference.conftest import DEPOSIT, PROVIDER_A, Market, fund
from tests.market.inference.servers import MODEL, Agent

MESSAGES = [{"role": "user", "content": "Say something."}]


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "content-type": "application/json"}


def _assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")


def test_oversized_body_is_refused_before_parsing(market: Market) -> None:
    big = b'{"model": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'
    response = httpx.post(f"{market.url}/chat/completions", content=big, headers=_headers("k"))
    _assert_too_large(response)  # before authentication and before JSON parsing


def test_oversized_chunked_body_is_refused(market: Market) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "'
        for _ in range(5):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = httpx.post(
        f"{market.url}/completions", content=chunks(), headers=_headers(market.api_key)
    )
    _assert_too_large(response)


def test_body_just_under_the_limit_is_parsed(market: Market) -> None:
    response = httpx.post(
        f"{market.url}/chat/completions",
        content=b"{" + b" " * (MAX_BODY_BYTES - 2) + b"}",
        headers=_headers(market.api_key),
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"


@pytest.mark.parametrize(
    "limits",
    [
        {"max_tokens": 10**12},
        {"max_completion_tokens": 2**40},
        {"max_tokens": 0},
        {"max_tokens": -5},
        {"max_tokens": 1.5},
        {"max_tokens": "many"},
    ],
)
def test_absurd_max_tokens_is_a_400(
    market: Market, agents: dict[str, Agent], limits: dict[str, object]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    response = httpx.post(
        f"{market.url}/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, **limits},
        headers=_headers(market.api_key),
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == next(iter(limits))
    with session_scope(market.sessions) as session:
        assert ledger.statement(session, market.buyer).available == DEPOSIT


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_a_lone_surrogate_is_a_400_that_costs_nothing(
    market: Market, agents: dict[str, Agent], route: str
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    text = '"cut \\ud83d inside an emoji"'
    field = {
        "chat/completions": f'"messages":[{{"role":"user","content":{text}}}]',
        "completions": f'"prompt":{text}',
    }[route]
    response = httpx.post(
        f"{market.url}/{route}",
        content=f'{{"model":"{MODEL}",{field},"max_tokens":4}}'.encode(),
        headers=_headers(market.api_key),
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    with session_scope(market.sessions) as session:
        assert ledger.statement(session, market.buyer).available == DEPOSIT


def test_another_buyers_job_is_not_found(market: Market, agents: dict[str, Agent]) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    job_id = raw.headers["x-job-id"]
    url = f"{market.served.url}/jobs/{job_id}"
    assert httpx.get(url, headers=_headers(market.api_key)).status_code == 200
    _, other_key = fund(market.sessions, 1_000)
    theirs = httpx.get(url, headers=_headers(other_key))
    missing = httpx.get(f"{market.served.url}/jobs/job-nope", headers=_headers(other_key))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "job_not_found"
    assert httpx.get(url).status_code == 401
    # The history: the buyer's own job; none for the other buyer, whose key cannot page
    # from this buyer's job; a limit out of range is refused with the parameter named.
    history = f"{market.served.url}/jobs"
    mine = httpx.get(history, headers=_headers(market.api_key))
    assert [row["id"] for row in mine.json()] == [job_id]
    assert httpx.get(history, headers=_headers(other_key)).json() == []
    paged = httpx.get(history, params={"before": job_id}, headers=_headers(other_key))
    assert paged.status_code == 404
    assert paged.json()["error"]["code"] == "job_not_found"
    too_many = httpx.get(history, params={"limit": 501}, headers=_headers(market.api_key))
    assert too_many.status_code == 422  # the market's own body, as docs/buyer-api.md says
    assert too_many.json()["error"]["code"] == "invalid_request"
    assert too_many.json()["error"]["message"].startswith("query.limit: ")
    assert httpx.get(history).status_code == 401
