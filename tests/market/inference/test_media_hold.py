"""The hold of a chat request with images, audio or other content parts that are not text."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from market.config import MEDIA_PART_TOKEN_BOUND, Settings
from market.db import session_scope
from market.inference.schemas import ChatCompletionRequest
from market.jobs.service import cost
from market.ledger import service as ledger
from tests.market.inference.conftest import PROVIDER_A, Market, fund
from tests.market.inference.servers import MODEL, Agent

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
QUESTION = {"type": "text", "text": "What is in this picture?"}


def _bound(messages: list[dict[str, Any]], **limits: Any) -> int:
    return ChatCompletionRequest(model=MODEL, messages=messages, **limits).prompt_bound()


def _text_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` without their parts that are not text."""
    return [
        {**m, "content": [p for p in m["content"] if p.get("type") == "text"]}
        if isinstance(m["content"], list)
        else m
        for m in messages
    ]


def _chat(market: Market, messages: list[dict[str, Any]], key: str | None = None) -> httpx.Response:
    body = {"model": MODEL, "messages": messages, "max_tokens": 8}
    headers = {"Authorization": f"Bearer {key or market.api_key}"}
    return httpx.post(f"{market.url}/chat/completions", json=body, headers=headers, timeout=30)


def test_each_part_that_is_not_text_counts_the_media_bound_instead_of_its_bytes() -> None:
    untyped = {"image_url": {"url": "https://example.com/dog.png"}}  # vLLM reads it as an image
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You describe pictures."},
        {"role": "user", "content": [QUESTION, IMAGE, AUDIO]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [untyped, {"type": "text", "text": "And this one?"}]},
    ]
    text_bound = _bound(_text_only(messages))
    assert _bound(messages) == text_bound + 3 * MEDIA_PART_TOKEN_BOUND
    request = ChatCompletionRequest(model=MODEL, messages=messages)
    assert request.prompt_bound(media_part_tokens=100) == text_bound + 3 * 100
    assert request.messages[1]["content"] == [QUESTION, IMAGE, AUDIO]  # measured, not changed


def test_a_large_inline_image_is_not_counted_by_its_bytes() -> None:
    data = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 200_000}}
    messages = [{"role": "user", "content": [QUESTION, data]}]
    assert _bound(messages) == _bound(_text_only(messages)) + MEDIA_PART_TOKEN_BOUND
    assert _bound(messages) < 200_000


def test_the_media_bound_is_a_setting() -> None:
    assert Settings().media_part_token_bound == MEDIA_PART_TOKEN_BOUND == 16_384
    settings = Settings(media_part_token_bound=4_096)
    assert settings.media_part_token_bound == 4_096
    docs = (Path(__file__).parents[3] / "docs" / "buyer-api.md").read_text()
    assert f"{MEDIA_PART_TOKEN_BOUND:,}" in docs
    assert "MARKET_MEDIA_PART_TOKEN_BOUND" in docs


@pytest.mark.parametrize("media_bound", [MEDIA_PART_TOKEN_BOUND, 100])
def test_the_hold_of_an_image_request_covers_the_media_bound(
    market: Market, agents: dict[str, Agent], monkeypatch: pytest.MonkeyPatch, media_bound: int
) -> None:
    settings = market.runtime.settings.model_copy(update={"media_part_token_bound": media_bound})
    monkeypatch.setattr(market.runtime, "settings", settings)
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 3_000_000)])
    messages = [{"role": "user", "content": [QUESTION, IMAGE]}]
    response = _chat(market, messages)
    assert response.status_code == 200, response.text
    bound = _bound(_text_only(messages)) + media_bound
    with session_scope(market.sessions) as session:
        hold = ledger.get_hold(session, response.headers["x-job-id"])
        assert hold.amount == cost(bound, 8, 1_000_000, 3_000_000)


def test_a_deposit_that_covers_the_text_but_not_the_image_is_refused(
    market: Market, agents: dict[str, Agent]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    _, key = fund(market.sessions, 2_000)
    assert _chat(market, _text_only([{"role": "user", "content": [QUESTION]}]), key).is_success
    refused = _chat(market, [{"role": "user", "content": [QUESTION, IMAGE]}], key)
    assert refused.status_code == 402
    assert refused.json()["error"]["type"] == "insufficient_quota"


def test_a_prompt_beyond_its_bound_is_charged_the_hold_and_logged(
    market: Market, agents: dict[str, Agent], caplog: pytest.LogCaptureFixture
) -> None:
    # The fake engine counts a token per 4 bytes of the messages' JSON: 100 kB of inline
    # image is ~25,000 prompt tokens, beyond the media bound of 16,384.
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    data = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    caplog.set_level(logging.WARNING, logger="market.jobs.service")
    response = _chat(market, [{"role": "user", "content": [QUESTION, data]}])
    assert response.status_code == 200, response.text
    job_id = response.headers["x-job-id"]
    prompt_tokens = response.json()["usage"]["prompt_tokens"]
    with session_scope(market.sessions) as session:
        hold = ledger.get_hold(session, job_id)
        assert cost(prompt_tokens, 8, 1_000_000, 1_000_000) > hold.amount == hold.charged
    warnings = [r.getMessage() for r in caplog.records if r.name == "market.jobs.service"]
    assert any(job_id in w and f"{prompt_tokens} prompt" in w for w in warnings), warnings
