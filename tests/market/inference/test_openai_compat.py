"""What OpenAI's own API accepts and answers, as its clients rely on it: `null` for any
optional parameter."""

from __future__ import annotations

from typing import Any

import httpx

from market.inference.schemas import DEFAULT_MAX_TOKENS
from tests.market.inference.conftest import PROVIDER_A, Market
from tests.market.inference.servers import MODEL, Agent
from tests.support.openai_upstream import UpstreamProcess

MESSAGES = [{"role": "user", "content": "Say something."}]
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


def _post(market: Market, route: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {market.api_key}"}
    return httpx.post(f"{market.url}/{route}", json=body, headers=headers, timeout=30)


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
        response = _post(market, "chat/completions", {**CHAT, **change})
        assert response.status_code == 400, (change, response.text)
        error = response.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            param,
            "invalid_parameter",
        ), change
        assert error["message"].startswith(f"{param}: "), error
