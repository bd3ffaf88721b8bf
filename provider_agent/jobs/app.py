"""The agent's job endpoint as a FastAPI app: `POST /jobs/chat/completions`, `/jobs/completions`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from nacl.signing import SigningKey

from provider_agent.energy import EnergyMeter
from provider_agent.jobs.config import JobsConfig
from provider_agent.jobs.energy import RequestEnergyTracker
from provider_agent.jobs.errors import JobError
from provider_agent.jobs.outbox import ReceiptOutbox
from provider_agent.jobs.receipts import ReceiptIssuer
from provider_agent.jobs.relay import open_upstream, relay_json, relay_stream, upstream_payload
from provider_agent.jobs.tickets import TICKET_HEADER, TicketChecker

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def system_ms() -> int:
    """Wall-clock unix milliseconds."""
    return time.time_ns() // 1_000_000


class JobService:
    """The endpoint's state: ticket checker, shared engine client, receipts and outbox."""

    def __init__(
        self,
        config: JobsConfig,
        signing_key: SigningKey,
        meter: EnergyMeter,
        now_ms: Callable[[], int],
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        """One pooled `httpx.AsyncClient` serves every job."""
        self.now_ms = now_ms
        self.checker = TicketChecker(config, now_ms)
        self.tracker = RequestEnergyTracker(meter)
        self.outbox = ReceiptOutbox(config.data_dir, fsync=config.outbox_fsync)
        self.issuer = ReceiptIssuer(config, signing_key, self.tracker, self.outbox)
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        timeout = httpx.Timeout(
            config.upstream_read_timeout_s, connect=config.upstream_connect_timeout_s
        )
        self.client = httpx.AsyncClient(
            base_url=config.upstream_url.rstrip("/"),
            limits=limits,
            timeout=timeout,
            transport=transport,
        )

    async def handle(self, path: str, request: Request) -> Response:
        """Check the ticket, forward to the engine, relay the answer with its receipt."""
        body = await request.body()
        try:
            job = self.checker.accept(request.headers.get(TICKET_HEADER), body)
        except JobError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        job_id = job.ticket.job_id
        self.tracker.begin(job_id)
        try:
            response = await open_upstream(self.client, path, upstream_payload(job))
            if not job.stream:
                content = await relay_json(response, job, self.issuer, self.now_ms)
                return Response(content, media_type="application/json")
        except JobError as exc:
            self.tracker.cancel(job_id)
            return JSONResponse(exc.body(), status_code=exc.status)
        events = relay_stream(
            response, job, self.issuer, self.now_ms, lambda: self.tracker.cancel(job_id)
        )
        return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)

    async def aclose(self) -> None:
        """Close the engine client's connections."""
        await self.client.aclose()


def create_app(
    config: JobsConfig,
    signing_key: SigningKey,
    meter: EnergyMeter,
    *,
    now_ms: Callable[[], int] = system_ms,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The job endpoint app; `app.state.jobs` is its `JobService` (outbox, replay cache).

    `signing_key` is the provider's Ed25519 key, `meter` its energy meter, `now_ms` the
    clock for tickets and receipt times, `transport` an optional engine transport.
    """
    service = JobService(config, signing_key, meter, now_ms, transport)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.aclose()

    app = FastAPI(title="provider agent jobs", lifespan=lifespan, openapi_url=None)
    app.state.jobs = service

    @app.post("/jobs/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        return await service.handle("/chat/completions", request)

    @app.post("/jobs/completions", response_model=None)
    async def completions(request: Request) -> Response:
        return await service.handle("/completions", request)

    return app
