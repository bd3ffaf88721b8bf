"""Token and queue counters scraped from vLLM's Prometheus /metrics.

vLLM exports counters as `vllm:prompt_tokens_total` and `vllm:generation_tokens_total`
(family names without `_total` once parsed) and gauges `vllm:num_requests_running` and
`vllm:num_requests_waiting`, one sample per engine and model. Attestations carry the
sums over the served model's label sets as integers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from provider_agent.engine.errors import MetricsParseError, MetricsUnavailableError

# Field name -> metric name as exported (counters end in `_total` on the wire).
_METRICS: dict[str, str] = {
    "prompt_tokens": "vllm:prompt_tokens",
    "generation_tokens": "vllm:generation_tokens",
    "requests_running": "vllm:num_requests_running",
    "requests_waiting": "vllm:num_requests_waiting",
}


@dataclass(frozen=True)
class EngineCounters:
    """vLLM's token counters (since start) and current queue sizes for one model."""

    prompt_tokens: int
    generation_tokens: int
    requests_running: int
    requests_waiting: int


def _as_int(name: str, value: float) -> int:
    if math.isnan(value) or math.isinf(value) or not value.is_integer() or value < 0:
        raise MetricsParseError(f"{name} is not a non-negative whole number: {value}")
    return int(value)


def _samples(text: str) -> Iterable[tuple[str, dict[str, str], float]]:
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                yield sample.name, sample.labels, sample.value
    except ValueError as exc:  # the parser's only error for malformed text
        raise MetricsParseError(f"malformed Prometheus text: {exc}") from exc


def parse_engine_counters(text: str, model_name: str | None = None) -> EngineCounters:
    """Sum each metric over the label sets of `model_name` (all models when `None`)."""
    wanted = {name: field for field, base in _METRICS.items() for name in (base, base + "_total")}
    totals: dict[str, float] = {}
    for name, labels, value in _samples(text):
        field = wanted.get(name)
        if field is None or (model_name is not None and labels.get("model_name") != model_name):
            continue
        totals[field] = totals.get(field, 0.0) + value
    missing = [_METRICS[field] for field in _METRICS if field not in totals]
    if missing:
        served = f" for model {model_name!r}" if model_name is not None else ""
        raise MetricsParseError(f"/metrics lacks {', '.join(missing)}{served}")
    return EngineCounters(**{field: _as_int(field, totals[field]) for field in _METRICS})


def fetch_engine_counters(
    client: httpx.Client, model_name: str | None = None, path: str = "/metrics"
) -> EngineCounters:
    """GET `path` with `client` (its base URL points at vLLM) and parse the counters."""
    try:
        response = client.get(path)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise MetricsUnavailableError(f"GET {path} failed: {exc}") from exc
    return parse_engine_counters(response.text, model_name)


async def afetch_engine_counters(
    client: httpx.AsyncClient, model_name: str | None = None, path: str = "/metrics"
) -> EngineCounters:
    """As `fetch_engine_counters`, with an async client."""
    try:
        response = await client.get(path)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise MetricsUnavailableError(f"GET {path} failed: {exc}") from exc
    return parse_engine_counters(response.text, model_name)
