"""Engine counters from vLLM's /metrics, against text captured from a real vLLM 0.32."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from provider_agent.engine.errors import EngineError, MetricsParseError, MetricsUnavailableError
from provider_agent.engine.metrics import (
    EngineCounters,
    afetch_engine_counters,
    fetch_engine_counters,
    parse_engine_counters,
)

REAL_METRICS = (Path(__file__).parent / "data" / "vllm-0.32-cpu-metrics.txt").read_text()

# Two engines (data parallel) serving one model, plus another model on the same server.
TWO_ENGINES = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama-8b"} 12.0
vllm:num_requests_running{engine="1",model_name="llama-8b"} 9.0
vllm:num_requests_running{engine="0",model_name="other"} 100.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama-8b"} 3.0
vllm:num_requests_waiting{engine="1",model_name="llama-8b"} 0.0
vllm:num_requests_waiting{engine="0",model_name="other"} 100.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="llama-8b"} 1.234567e+06
vllm:prompt_tokens_total{engine="1",model_name="llama-8b"} 765433.0
vllm:prompt_tokens_total{engine="0",model_name="other"} 100.0
vllm:prompt_tokens_created{engine="0",model_name="llama-8b"} 1.7953634842308614e+09
vllm:prompt_tokens_created{engine="1",model_name="llama-8b"} 1.7953634842308614e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="llama-8b"} 5.0e+06
vllm:generation_tokens_total{engine="1",model_name="llama-8b"} 4000001.0
vllm:generation_tokens_total{engine="0",model_name="other"} 100.0
"""


def test_real_vllm_032_metrics() -> None:
    assert parse_engine_counters(REAL_METRICS, "tiny-llama") == EngineCounters(
        prompt_tokens=132, generation_tokens=481, requests_running=8, requests_waiting=0
    )


def test_sums_over_engines_of_the_served_model_only() -> None:
    assert parse_engine_counters(TWO_ENGINES, "llama-8b") == EngineCounters(
        prompt_tokens=2_000_000,
        generation_tokens=9_000_001,
        requests_running=21,
        requests_waiting=3,
    )
    assert parse_engine_counters(TWO_ENGINES).requests_running == 121


def test_counters_without_type_lines_keep_their_total_suffix() -> None:
    untyped = "\n".join(line for line in TWO_ENGINES.splitlines() if not line.startswith("#"))
    assert parse_engine_counters(untyped + "\n", "llama-8b").generation_tokens == 9_000_001


def test_model_not_served_is_a_parse_error() -> None:
    with pytest.raises(MetricsParseError, match="for model 'missing'"):
        parse_engine_counters(REAL_METRICS, "missing")


def test_text_without_vllm_metrics_names_what_is_missing() -> None:
    with pytest.raises(MetricsParseError, match="lacks vllm:prompt_tokens, vllm:generation"):
        parse_engine_counters("# TYPE up gauge\nup 1\n")


@pytest.mark.parametrize(
    "text",
    [
        'vllm:prompt_tokens_total{model_name="m" 3\n',
        "<html>502 Bad Gateway</html>\n",
        "vllm:prompt_tokens_total not-a-number\n",
    ],
)
def test_malformed_text_is_a_parse_error(text: str) -> None:
    with pytest.raises(MetricsParseError, match="malformed Prometheus text"):
        parse_engine_counters(text)


@pytest.mark.parametrize("value", ["12.5", "NaN", "+Inf", "-1"])
def test_non_whole_counts_are_rejected(value: str) -> None:
    text = TWO_ENGINES.replace(
        'vllm:num_requests_waiting{engine="0",model_name="llama-8b"} 3.0',
        f'vllm:num_requests_waiting{{engine="0",model_name="llama-8b"}} {value}',
    )
    with pytest.raises(MetricsParseError, match="requests_waiting"):
        parse_engine_counters(text, "llama-8b")


def serve(status: int, body: str) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        return httpx.Response(status, text=body, headers={"content-type": "text/plain"})

    return httpx.MockTransport(handler)


def test_fetch_reads_metrics_through_the_client() -> None:
    with httpx.Client(base_url="http://vllm:8000", transport=serve(200, REAL_METRICS)) as client:
        assert fetch_engine_counters(client, "tiny-llama").generation_tokens == 481


def test_async_fetch_reads_metrics_through_the_client() -> None:
    async def go() -> EngineCounters:
        transport = serve(200, TWO_ENGINES)
        async with httpx.AsyncClient(base_url="http://vllm:8000", transport=transport) as client:
            return await afetch_engine_counters(client, "llama-8b")

    assert asyncio.run(go()).prompt_tokens == 2_000_000


def test_http_error_status_is_unavailable() -> None:
    with (
        httpx.Client(base_url="http://vllm:8000", transport=serve(503, "busy")) as client,
        pytest.raises(MetricsUnavailableError, match="503"),
    ):
        fetch_engine_counters(client)


def test_connection_refused_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        httpx.Client(base_url="http://vllm:8000", transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(MetricsUnavailableError) as caught,
    ):
        fetch_engine_counters(client)
    assert isinstance(caught.value, EngineError)
    assert caught.value.code == "metrics_unavailable"
