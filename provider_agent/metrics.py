"""Prometheus metrics at the agent's `GET /metrics`: the process's own, and the agent's state.

The agent's figures are those `GET /agent/status` shows, read at each scrape (nothing is
counted for them in the request path but the served totals, `provider_agent.jobs.served`),
so the two never disagree. Counters count since the agent started.

- `agent_healthy`: 1 while the engine is healthy and receipts can be stored (jobs are taken).
- `agent_engine_state{state}`: 1 for the engine's state (starting, healthy, unhealthy,
  restarting, stopped), 0 for the others; `agent_engine_restarts_total`.
- `agent_registered`: 1 while the market holds the offer this agent registered (heartbeats
  are sent only then); `agent_registered_context_length` (absent: the engine reports none).
- `agent_heartbeats_sent_total`; `agent_heartbeat_failing`: 1 if the last one failed.
- `agent_attestations_signed_total`; `agent_attested_energy_joules_total{method}` (measured,
  estimated): the energy of those windows, the GPUs' whole draw, idle time included;
  `agent_attestation_head_seq` (absent before the first), `agent_attestations_unsent`,
  `agent_attestation_send_failures_total`, `agent_attestations_set_aside_total` (refused for
  good), `agent_attestation_write_failing`: 1 if the last one could not be stored.
- `agent_jobs_in_flight`, `agent_jobs_max_concurrency` (`offer.max_concurrency`).
- `agent_receipts_total{status, energy_method}`: receipts signed and stored;
  `agent_tokens_total{kind}` (prompt, completion) on them;
  `agent_receipt_energy_joules_total{method}` (measured, estimated): the energy they attribute
  to their requests. Unmeasured receipts add no joules.
- `agent_receipts_answered_total{state}`: the market's answers on the receipt sync;
  `agent_receipt_sync_failing`; `agent_outbox_writable`: 0 while receipts cannot be stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from protocol.prometheus import registry_with
from provider_agent.supervisor import EngineState

Status = Callable[[], dict[str, Any]]


def _gauge(name: str, documentation: str, value: float | None) -> Iterator[Metric]:
    """One unlabelled gauge; none when `value` is None (not known)."""
    if value is not None:
        yield GaugeMetricFamily(name, documentation, value=value)


def _flag(name: str, documentation: str, on: bool) -> Metric:
    return GaugeMetricFamily(name, documentation, value=int(on))


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _counters(name: str, documentation: str, label: str, values: dict[str, float]) -> Metric:
    """One counter per value of `label`."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _joules(millijoules: dict[str, int]) -> dict[str, float]:
    return {method: mj / 1000 for method, mj in millijoules.items()}


class AgentCollector(Collector):
    """The agent's state, from `status()` (the body of `GET /agent/status`) at each scrape."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield _flag("agent_healthy", "1 while the agent takes jobs.", status["healthy"])
        yield from _engine(status["engine"])
        yield from _market(status)
        yield from _attestations(status["attestations"])
        yield from _jobs(status["jobs"])
        yield from _receipts(status["receipts"])


def _engine(engine: dict[str, Any]) -> Iterator[Metric]:
    states = GaugeMetricFamily(
        "agent_engine_state", "1 for the engine's state, 0 for the others.", labels=["state"]
    )
    for state in EngineState:
        states.add_metric([state.value], int(engine["state"] == state.value))
    yield states
    yield _counter("agent_engine_restarts", "Engine restarts.", engine["restarts"])


def _market(status: dict[str, Any]) -> Iterator[Metric]:
    registration, heartbeats = status["registration"], status["heartbeats"]
    yield _flag(
        "agent_registered",
        "1 while the market holds this agent's offer.",
        registration["registered"],
    )
    yield from _gauge(
        "agent_registered_context_length",
        "The context length the registered offer states.",
        registration["context_length"],
    )
    yield _counter("agent_heartbeats_sent", "Heartbeats the market took.", heartbeats["sent"])
    yield _flag(
        "agent_heartbeat_failing",
        "1 if the last heartbeat failed.",
        heartbeats["last_error"] is not None,
    )


def _attestations(attestations: dict[str, Any]) -> Iterator[Metric]:
    yield _counter(
        "agent_attestations_signed", "Attestation windows signed.", attestations["signed"]
    )
    yield _counters(
        "agent_attested_energy_joules",
        "The energy of the attested windows (the rig's GPUs, idle time too), by method.",
        "method",
        _joules(attestations["energy_millijoules"]),
    )
    yield from _gauge(
        "agent_attestation_head_seq", "The seq of the last attestation.", attestations["head_seq"]
    )
    yield GaugeMetricFamily(
        "agent_attestations_unsent",
        "Signed attestations the market has not acknowledged.",
        value=attestations["unsent"],
    )
    yield _counter(
        "agent_attestation_send_failures",
        "Attestation posts that failed.",
        attestations["send_failures"],
    )
    yield _counter(
        "agent_attestations_set_aside",
        "Attestations set aside after the market refused them for good.",
        attestations["set_aside"],
    )
    yield _flag(
        "agent_attestation_write_failing",
        "1 if the last attestation could not be stored.",
        attestations["write_error"] is not None,
    )


def _jobs(jobs: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("agent_jobs_in_flight", "Jobs being served.", value=jobs["in_flight"])
    yield GaugeMetricFamily(
        "agent_jobs_max_concurrency", "The most jobs served at once.", value=jobs["max_concurrency"]
    )
    served = jobs["served"]
    receipts = CounterMetricFamily(
        "agent_receipts",
        "Receipts signed and stored, by status and energy method.",
        labels=["status", "energy_method"],
    )
    for status, methods in served["receipts"].items():
        for method, count in methods.items():
            receipts.add_metric([status, method], count)
    yield receipts
    tokens = {"prompt": served["prompt_tokens"], "completion": served["completion_tokens"]}
    yield _counters("agent_tokens", "Tokens on the signed receipts.", "kind", tokens)
    yield _counters(
        "agent_receipt_energy_joules",
        "Energy the signed receipts attribute to their requests, by method.",
        "method",
        _joules(served["energy_millijoules"]),
    )


def _receipts(receipts: dict[str, Any]) -> Iterator[Metric]:
    yield _counters(
        "agent_receipts_answered",
        "The market's answers on the receipt sync, by state.",
        "state",
        receipts["answered"],
    )
    yield _flag(
        "agent_receipt_sync_failing",
        "1 if the last receipt sync failed.",
        receipts["last_error"] is not None,
    )
    yield _flag(
        "agent_outbox_writable",
        "0 while receipts cannot be stored.",
        receipts["outbox_error"] is None,
    )


def registry_for(status: Status) -> CollectorRegistry:
    """A registry with the process, platform and GC metrics and the agent's own."""
    return registry_with(AgentCollector(status))


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    """`GET /metrics` in Prometheus' text format."""

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
