"""What OpenAI's own API accepts and answers, as its clients rely on it: `null` for any
optional parameter, an `x-request-id` header on every answer, and the default completion limit
of a request without one, as docs/buyer-api.md gives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import select

from market.db import session_scope
from market.inference.schemas import DEFAULT_MAX_TOKENS, ChatCompletionRequest
from market.jobs.models import Job, JobStatus
from market.jobs.service import cost
from market.ledger import service as ledger
from tests.market.inference.conftest import PROVIDER_A, Market
from tests.market.inference.servers import MODEL, Agent
from tests.support.openai_upstream import UpstreamProcess

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
COMPLETION: dict[str, Any] = {"model": MODEL, "prompt": "Once upon", "max_tokens": 4}

#: Optional parameters OpenAI documents as nullable: `null` is "use the default".
NULLABLE_CHAT = [
    "stream",
    "stream_options",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "service_tier",
    "metadata",
    "provider",
]
NULLABLE_COMPLETION = [
    "stream",
    "stream_options",
    "n",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "echo",
    "suffix",
    "best_of",
    "logprobs",
    "user",
    "provider",
]
#: Nested optional parameters: null inside their objects.
NESTED_NULLS: list[dict[str, Any]] = [
    {"stream": True, "stream_options": {"include_usage": None}},
    {"provider": {"allow_fallbacks": None, "sort": None, "only": None, "max_price": None}},
    {"provider": {"max_price": {"prompt": None, "completion": None}}},
]
#: A wrong type for a parameter the market reads: 400, the parameter named.
WRONG_TYPES: list[tuple[dict[str, Any], str]] = [
    ({"stream": "yes"}, "stream"),
    ({"n": "1"}, "n"),
    ({"n": 2}, "n"),
    ({"max_tokens": "16"}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"stream_options": "usage"}, "stream_options"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"provider": "cheapest"}, "provider"),
    ({"provider": {"allow_fallbacks": []}}, "provider.allow_fallbacks"),
    ({"model": None}, "model"),
    ({"messages": None}, "messages"),
]


def _jobs(market: Market) -> list[Job]:
    with session_scope(market.sessions) as session:
        return list(session.scalars(select(Job)))


def _post(market: Market, route: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {market.api_key}"}
    return httpx.post(f"{market.url}/{route}", json=body, headers=headers, timeout=30)


def _invalid(response: httpx.Response, param: str | None) -> str:
    """The message of a 400 `invalid_parameter` naming `param`, in OpenAI's envelope."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        param,
        "invalid_parameter",
    ), error
    return str(error["message"])


def test_null_is_the_default_for_every_optional_parameter(
    market: Market, agents: dict[str, Agent]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    cases = [("chat/completions", {**CHAT, name: None}) for name in NULLABLE_CHAT]
    cases += [("completions", {**COMPLETION, name: None}) for name in NULLABLE_COMPLETION]
    cases += [("chat/completions", {**CHAT, **nested}) for nested in NESTED_NULLS]
    refused = {}
    for route, body in cases:
        response = _post(market, route, body)
        if response.status_code != 200:
            refused[f"{route} {body}"] = (response.status_code, response.text)
    assert refused == {}


def test_null_stream_is_not_streamed_and_null_limits_hold_the_default(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    body = {**CHAT, "stream": None, "n": None, "max_tokens": None, "provider": None}
    response = _post(market, "chat/completions", body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["object"] == "chat.completion"
    sent = upstream.last_body()
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS
    assert (sent["stream"], sent["n"], "provider" in sent) == (False, 1, False)


def test_a_wrong_type_is_a_400_naming_the_parameter(
    market: Market, agents: dict[str, Agent]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    for change, param in WRONG_TYPES:
        message = _invalid(_post(market, "chat/completions", {**CHAT, **change}), param)
        assert message.startswith(f"{param}: "), (change, message)


def test_every_answer_carries_a_request_id_naming_its_job(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=4
    )
    completion = raw.parse()
    assert completion._request_id == raw.headers["x-job-id"]
    assert completion._request_id in {job.id for job in _jobs(market)}
    text = client.completions.create(model=MODEL, prompt="Once", max_tokens=4)
    assert text._request_id in {job.id for job in _jobs(market)}
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
    ) as streamed:
        assert streamed.headers["x-request-id"] == streamed.headers["x-job-id"]
        assert len(list(streamed.iter_lines())) > 1
    upstream.control(status=400)  # the engine refuses: the failed job is the request's id
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    (failed,) = [job for job in _jobs(market) if job.status is JobStatus.FAILED]
    assert refused.value.request_id == failed.id
    assert refused.value.response.headers["x-job-id"] == failed.id


def test_answers_without_a_job_carry_a_fresh_request_id(
    market: Market, agents: dict[str, Agent]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    wrong = openai.OpenAI(base_url=market.url, api_key="sk-jm-wrong", max_retries=0)
    ids = set()
    for _ in range(2):
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert refused.value.request_id is not None
        ids.add(refused.value.request_id)
    assert len(ids) == 2
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert unknown.value.request_id
    assert client.models.list()._request_id
    assert client.models.retrieve(MODEL)._request_id
    headers = {"Authorization": f"Bearer {market.api_key}"}
    for response in (
        httpx.post(f"{market.url}/chat/completions", json={**CHAT, "n": 2}, headers=headers),
        httpx.post(f"{market.url}/embeddings", json={}, headers=headers),
        httpx.get(f"{market.url}/chat/completions", headers=headers),
    ):
        assert response.headers["x-request-id"].startswith("req_"), response
    assert _jobs(market) == []


def test_a_client_request_id_is_echoed_and_never_taken_as_the_request_id(
    market: Market, agents: dict[str, Agent]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    headers = {
        "Authorization": f"Bearer {market.api_key}",
        "X-Request-Id": "req_chosen_by_the_client",
        "X-Client-Request-Id": "trace-42",
    }
    response = httpx.post(f"{market.url}/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == response.headers["x-job-id"]
    assert response.headers["x-client-request-id"] == "trace-42"
    assert response.headers.get_list("x-request-id") == [response.headers["x-job-id"]]
    long = {**headers, "X-Client-Request-Id": "x" * 513}
    refused = httpx.post(f"{market.url}/chat/completions", json={}, headers=long)
    assert refused.status_code == 400
    assert "x-client-request-id" not in refused.headers
    assert refused.headers["x-request-id"] != "req_chosen_by_the_client"


def test_without_max_tokens_the_documented_default_limits_and_holds(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 3_000_000)])
    body = {"model": MODEL, "messages": MESSAGES}
    response = _post(market, "chat/completions", body)
    assert response.status_code == 200
    assert upstream.last_body()["max_tokens"] == DEFAULT_MAX_TOKENS
    prompt_bound = ChatCompletionRequest.model_validate(body).prompt_bound()
    with session_scope(market.sessions) as session:
        hold = ledger.get_hold(session, response.headers["x-job-id"])
        assert hold.amount == cost(prompt_bound, DEFAULT_MAX_TOKENS, 1_000_000, 3_000_000)
    docs = (Path(__file__).parents[3] / "docs" / "buyer-api.md").read_text()
    assert f"{DEFAULT_MAX_TOKENS:,}" in docs
    assert "DEFAULT_MAX_TOKENS" in docs


def test_an_unhandled_error_is_a_500_in_openais_envelope_with_a_request_id(
    market: Market, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(runtime: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("market.inference.service.list_models", broken)
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    with pytest.raises(openai.InternalServerError) as failed:
        client.models.list(extra_headers={"X-Client-Request-Id": "trace-7"})
    error = failed.value
    assert error.status_code == 500
    assert error.body == {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    request_id = error.request_id
    assert request_id is not None
    assert request_id.startswith("req_")
    assert error.response.headers["x-client-request-id"] == "trace-7"
    logged = [r.getMessage() for r in caplog.records if r.name == "market.inference.errors"]
    assert logged == [f"GET /v1/models failed as {request_id}: RuntimeError('a bug')"]


#: OpenAI's four forms of a completion prompt, each holding one prompt, and its bound.
PROMPT_FORMS: list[tuple[Any, int]] = [
    ("Once upon", 9 + 8),
    ([791, 3971, 5304], 3 + 8),
    (["Once upon"], 9 + 8),
    ([[791, 3971, 5304]], 3 + 8),
]


@pytest.mark.parametrize(("prompt", "bound"), PROMPT_FORMS, ids=["text", "ids", "[text]", "[ids]"])
def test_a_completion_takes_one_prompt_in_any_of_openais_forms(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess, prompt: Any, bound: int
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 3_000_000)])
    response = _post(market, "completions", {**COMPLETION, "prompt": prompt})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4
    assert upstream.last_body()["prompt"] == prompt
    with session_scope(market.sessions) as session:
        hold = ledger.get_hold(session, response.headers["x-job-id"])
        assert hold.amount == cost(bound, 4, 1_000_000, 3_000_000)


#: Requests the market does not serve: 400 naming the parameter and saying why; no job.
NOT_SERVED: list[tuple[str, dict[str, Any], str | None, str]] = [
    ("completions", {"prompt": ["Once", "upon"]}, "prompt", "2 prompts in one request: one is"),
    ("completions", {"prompt": [[1, 2], [3]]}, "prompt", "2 prompts in one request: one is"),
    ("completions", {"prompt": []}, "prompt", "the prompt is empty"),
    ("completions", {"prompt": [""]}, "prompt", "the prompt is empty"),
    ("completions", {"prompt": [1, "a"]}, "prompt", "must be a string, a list of token ids"),
    ("completions", {"prompt": [-1]}, "prompt", "must be a string, a list of token ids"),
    ("completions", {"echo": True}, "echo", "echo is not served: the provider asks"),
    ("completions", {"max_completion_tokens": "5"}, "max_completion_tokens", "Input should"),
    ("completions", {"n": 2}, "n", "only n=1 is served (got 2): each choice is its own job"),
    ("chat/completions", {"n": 3}, "n", "only n=1 is served (got 3)"),
    ("chat/completions", {"return_token_ids": True}, None, "parameter 'return_token_ids' is"),
    ("chat/completions", {"include_reasoning": False}, "include_reasoning", "include_reasoning:"),
    ("chat/completions", {"include_reasoning": "false"}, "include_reasoning", "Input should"),
    ("chat/completions", {"include_reasoning": 0}, "include_reasoning", "Input should"),
]


def test_what_the_market_does_not_serve_is_a_400_that_says_why(
    market: Market, agents: dict[str, Agent]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    for route, change, param, says in NOT_SERVED:
        base = COMPLETION if route == "completions" else CHAT
        message = _invalid(_post(market, route, {**base, **change}), param)
        assert message.startswith(f"{param}: {says}" if param else says), (change, message)
        assert "Value error" not in message
    assert _jobs(market) == []


def test_max_completion_tokens_limits_a_completion_as_it_does_a_chat(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 3_000_000)])
    body = {**COMPLETION, "max_tokens": 9, "max_completion_tokens": 3}
    response = _post(market, "completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3
    sent = upstream.last_body()
    assert (sent["max_tokens"], "max_completion_tokens" in sent) == (3, False)
    with session_scope(market.sessions) as session:
        hold = ledger.get_hold(session, response.headers["x-job-id"])
        assert hold.amount == cost(9 + 8, 3, 1_000_000, 3_000_000)


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_a_body_that_is_not_json_is_a_400_as_openai_words_it(market: Market, route: str) -> None:
    headers = {"Authorization": f"Bearer {market.api_key}", "content-type": "application/json"}
    response = httpx.post(f"{market.url}/{route}", content=b'{"model":', headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        None,
        "invalid_json",
    )
    assert error["message"].startswith("We could not parse the JSON body of your request: ")
    assert error["message"].endswith(" at character 9.")
