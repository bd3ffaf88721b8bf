"""Prometheus metrics at `/metrics`: the process's own, and the market's state at each scrape.

The market's figures are read from the routing table and the database when Prometheus
scrapes, not counted in the request path: they cost a request nothing, read the same from
every API process, and survive restarts. Each app has its own registry, so several apps in
one process (the tests) do not collide. `GET /metrics` is a plain (thread-pool) route: a
scrape's database reads never hold up the event loop that relays requests.

- `market_offers_online{model}`: offers in the routing table (heartbeating providers).
- `market_requests_in_flight{model}`: requests the market is serving now on those offers.
- `market_epochs{status}`: epochs pending, submitted (sent, not yet seen settled) and settled.
- `market_epoch_last_settled`: the number of the last settled epoch (0: none yet).
- `market_epoch_unsettled_age_seconds`: how long the oldest epoch not yet settled has been
  open (0: none). An epoch whose settlement keeps reverting shows here, growing, before
  anything else does: alert on it staying above a few epochs' length.
- `market_receipts_unsettled`: verified receipts that no epoch holds yet.
- `market_jobs_open`: jobs routed and not yet ended (their holds are held), from every API
  process; `market_jobs_open_oldest_age_seconds`: the age of the oldest (0: none). A job
  outlives its request only if its process stopped; the release of orphaned jobs ends it
  within `MARKET_ORPHANED_JOB_AFTER_S` (`market.jobs.orphans`), so an age that keeps growing
  past that says the release is not running.
- `market_reconciliation_differences`: figures on which the ledger and the chain disagreed at
  the last check (`market.settlement.reconcile`; anything above 0 is an incident);
  `market_reconciliation_age_seconds`: since that check (it runs every few minutes: an age
  that keeps growing says it stopped); `market_reconciliation_accounts_compared`: 1 if that
  check compared every account, 0 if a settlement in flight limited it to the totals.
  Absent before the first check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from market.db import session_scope, utcnow
from market.jobs.models import Job, JobStatus, Receipt
from market.runtime import Runtime
from market.settlement.models import ChainReconciliation, Epoch, EpochStatus
from protocol.prometheus import registry_with


class MarketCollector(Collector):
    """The market's state, read at each scrape from the runtime `runtime()` returns (None
    before the app has started: only the process metrics are served then)."""

    def __init__(self, runtime: Callable[[], Runtime | None]) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runtime = self._runtime()
        if runtime is None:
            return
        yield from _routing(runtime)
        yield from _settlement(runtime)


def _routing(runtime: Runtime) -> Iterator[GaugeMetricFamily]:
    online = GaugeMetricFamily(
        "market_offers_online", "Offers in the routing table, by model.", labels=["model"]
    )
    busy = GaugeMetricFamily(
        "market_requests_in_flight",
        "Requests being served now on the routed offers, by model.",
        labels=["model"],
    )
    for model in runtime.routing.models():
        offers = runtime.routing.offers(model)
        online.add_metric([model], len(offers))
        busy.add_metric([model], sum(offer.in_flight for offer in offers))
    yield online
    yield busy


def _settlement(runtime: Runtime) -> Iterator[GaugeMetricFamily]:
    with session_scope(runtime.sessions) as session:
        counts = dict(
            session.execute(select(Epoch.status, func.count()).group_by(Epoch.status)).all()
        )
        last = session.scalar(
            select(func.max(Epoch.number)).where(Epoch.status == EpochStatus.SETTLED)
        )
        oldest = session.scalar(
            select(func.min(Epoch.created_at)).where(Epoch.status != EpochStatus.SETTLED)
        )
        unsettled = session.scalar(
            select(func.count()).select_from(Receipt).where(Receipt.epoch.is_(None))
        )
        open_jobs, oldest_job = session.execute(
            select(func.count(), func.min(Job.created_at)).where(Job.status == JobStatus.ROUTED)
        ).one()
        check = session.execute(
            select(
                ChainReconciliation.checked_at,
                ChainReconciliation.differences,
                ChainReconciliation.accounts_compared,
            )
            .order_by(ChainReconciliation.id.desc())
            .limit(1)
        ).first()
    epochs = GaugeMetricFamily("market_epochs", "Epochs by status.", labels=["status"])
    for status in EpochStatus:
        epochs.add_metric([status.value], counts.get(status, 0))
    yield epochs
    yield GaugeMetricFamily(
        "market_epoch_last_settled", "The last settled epoch (0: none yet).", value=last or 0
    )
    age = 0.0 if oldest is None else (utcnow() - oldest).total_seconds()
    yield GaugeMetricFamily(
        "market_epoch_unsettled_age_seconds",
        "Seconds since the oldest epoch not yet settled was opened (0: none).",
        value=age,
    )
    yield GaugeMetricFamily(
        "market_receipts_unsettled", "Verified receipts in no epoch yet.", value=unsettled or 0
    )
    yield GaugeMetricFamily(
        "market_jobs_open", "Jobs routed and not yet ended (holds held).", value=open_jobs
    )
    job_age = 0.0 if oldest_job is None else (utcnow() - oldest_job).total_seconds()
    yield GaugeMetricFamily(
        "market_jobs_open_oldest_age_seconds",
        "Seconds since the oldest job not yet ended was routed (0: none).",
        value=job_age,
    )
    if check is not None:
        checked_at, differences, compared = check
        yield GaugeMetricFamily(
            "market_reconciliation_differences",
            "Figures on which the ledger and the chain disagreed at the last check.",
            value=differences,
        )
        yield GaugeMetricFamily(
            "market_reconciliation_age_seconds",
            "Seconds since the ledger was last checked against the chain.",
            value=(utcnow() - checked_at).total_seconds(),
        )
        yield GaugeMetricFamily(
            "market_reconciliation_accounts_compared",
            "1 if the last check compared every account, 0 if only the totals.",
            value=int(compared),
        )


def registry_for(runtime: Callable[[], Runtime | None]) -> CollectorRegistry:
    """A registry with the process, platform and GC metrics and the market's own."""
    return registry_with(MarketCollector(runtime))


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus' text format (a plain `def`: FastAPI runs it in its thread pool)."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
