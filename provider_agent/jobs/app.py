"""The agent's job endpoint as a Starlette app: `POST /jobs/chat/completions`, `/jobs/completions`,
and `POST /jobs/cancel` (the market stops a stream whose buyer went away)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager

from nacl.signing import SigningKey
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from protocol.disconnect import ClientGone, Departure
from protocol.recursion import cap_recursion
from provider_agent.energy import EnergyMeter
from provider_agent.jobs.config import JobsConfig
from provider_agent.jobs.energy import RequestEnergyTracker
from provider_agent.jobs.engine_client import EngineClient
from provider_agent.jobs.errors import JobError
from provider_agent.jobs.outbox import ReceiptOutbox
from provider_agent.jobs.receipts import ReceiptIssuer, outbox_unavailable
from provider_agent.jobs.relay import (
    StreamCancel,
    open_upstream,
    relay_json,
    relay_stream,
    upstream_payload,
)
from provider_agent.jobs.tickets import TICKET_HEADER, TicketChecker

logger = logging.getLogger(__name__)
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def system_ms() -> int:
    """Wall-clock unix milliseconds."""
    return time.time_ns() // 1_000_000


def _refusal(exc: JobError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


_ROUTING_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in the endpoint's error shape."""
    assert isinstance(exc, HTTPException)
    code = _ROUTING_CODES.get(exc.status_code, "http_error")
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return _refusal(JobError(exc.status_code, code, message, dict(exc.headers or {}) or None))


class Slots:
    """Jobs in progress against `max_concurrency` (None: no cap)."""

    def __init__(self, limit: int | None, retry_after_s: int) -> None:
        """`retry_after_s` goes in the 429's `Retry-After` header."""
        self.limit = limit
        self.in_use = 0
        self._retry_after = str(retry_after_s)

    def acquire(self) -> Slot:
        """Take a slot, or raise 429 `at_capacity` (with `Retry-After`) when none is free."""
        if self.limit is not None and self.in_use >= self.limit:
            raise JobError(
                429,
                "at_capacity",
                f"this agent is serving its maximum of {self.limit} concurrent jobs",
                headers={"Retry-After": self._retry_after},
            )
        self.in_use += 1
        return Slot(self)


class Slot:
    """One taken slot; `release()` gives it back (once, however often it is called)."""

    def __init__(self, slots: Slots) -> None:
        self._slots: Slots | None = slots

    def release(self) -> None:
        """Give the slot back; later calls do nothing."""
        if self._slots is not None:
            self._slots.in_use -= 1
            self._slots = None


class _SlotStreamingResponse(StreamingResponse):
    """A stream that closes its events and gives its slot back when it ends, even if never
    iterated; then `abandon` runs (it must be harmless after a stream that ran: closing a
    generator that never started runs none of its cleanup)."""

    def __init__(
        self, events: AsyncGenerator[bytes, None], slot: Slot, abandon: Callable[[], None]
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        self._events = events
        self._slot = slot
        self._abandon = abandon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._events.aclose()
            finally:
                self._slot.release()
                self._abandon()


MARKET_GONE = "market_gone"


@asynccontextmanager
async def market_watch(receive: Receive) -> AsyncIterator[None]:
    """While the body runs (the request's body already read), a market that closes the
    connection cancels it, and `JobError` 499 `market_gone` is raised: the engine's request
    is closed with it (vLLM aborts it), so a job the market gave up on (its first-token
    timeout, its buyer gone) is not computed to the end for nobody. Once a stream's
    response starts, Starlette watches for the same and ends the stream."""
    try:
        async with Departure(receive) as departure, departure.cancellable():
            yield
    except ClientGone:
        message = "the market closed the request before the engine answered"
        raise JobError(499, MARKET_GONE, message) from None


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> JobError:
    return JobError(413, "request_too_large", f"the request body exceeds {limit} bytes")


class JobService:
    """The endpoint's state: ticket checker, shared engine client, receipts and outbox."""

    def __init__(
        self,
        config: JobsConfig,
        signing_key: SigningKey,
        meter: EnergyMeter,
        now_ms: Callable[[], int],
    ) -> None:
        """One pooled engine client (`EngineClient`, aiohttp) serves every job."""
        self.engine = EngineClient(config)
        self.now_ms = now_ms
        self.max_body_bytes = config.max_body_bytes
        self.checker = TicketChecker(config, now_ms)
        self.slots = Slots(config.max_concurrency, config.retry_after_s)
        self.tracker = RequestEnergyTracker(meter)
        self.outbox = ReceiptOutbox(
            config.data_dir,
            fsync=config.outbox_fsync,
            min_free_bytes=config.outbox_min_free_bytes,
        )
        self.issuer = ReceiptIssuer(config, signing_key, self.tracker, self.outbox)
        self.streams: dict[str, StreamCancel] = {}
        """The streams in progress, by job id: how each is cancelled."""

    async def handle(self, path: str, request: Request) -> Response:
        """Check the ticket, take a slot, forward to the engine, relay the answer with its
        receipt. Refusals (including 429 at capacity) never reach the engine nor consume
        the job id."""
        try:
            body = await read_capped(request, self.max_body_bytes)
            job = self.checker.check(request.headers.get(TICKET_HEADER), body)
            if not self.outbox.writable():
                raise outbox_unavailable(self.outbox)
            slot = self.slots.acquire()
        except JobError as exc:
            return _refusal(exc)
        try:
            self.checker.claim(job)
        except JobError as exc:
            slot.release()
            return _refusal(exc)
        job_id = job.ticket.job_id
        self.tracker.begin(job_id)
        streaming = False
        try:
            session, url = self.engine.session(), self.engine.urls[path]
            async with market_watch(request.receive):
                response = await open_upstream(session, url, upstream_payload(job))
                if not job.stream:
                    content = await relay_json(response, job, self.issuer, self.now_ms)
                    return Response(content, media_type="application/json")
            streaming = True
        except JobError as exc:
            self.tracker.cancel(job_id)
            if exc.code == MARKET_GONE:
                logger.info("job %s: the market left before the engine answered", job_id)
            return _refusal(exc)
        finally:
            if not streaming:
                slot.release()

        def drop() -> None:  # a cancel that comes once the relay is over finds nothing
            if self.streams.get(job_id) is cancel:
                del self.streams[job_id]

        cancel = self.streams[job_id] = StreamCancel(response, drop)

        def forget() -> None:  # no-ops once the stream has ended its own way
            response.release()
            self.tracker.cancel(job_id)
            drop()

        events = relay_stream(
            response, job, self.issuer, self.now_ms, lambda: self.tracker.cancel(job_id), cancel
        )
        return _SlotStreamingResponse(events, slot, forget)

    def cancel(self, request: Request) -> Response:
        """Stop the stream of the job whose ticket the request carries: it ends with an
        interrupted receipt (`cancelled`) for the tokens delivered. 404 `job_not_running`
        when no stream of that job is in progress (it ended, or never started here)."""
        try:
            ticket = self.checker.authentic(request.headers.get(TICKET_HEADER))
        except JobError as exc:
            return _refusal(exc)
        cancel = self.streams.get(ticket.job_id)
        if cancel is None:
            message = f"no stream of job {ticket.job_id} is in progress"
            return _refusal(JobError(404, "job_not_running", message))
        cancel()
        return JSONResponse({"job_id": ticket.job_id, "cancelled": True})

    async def aclose(self) -> None:
        """Close the engine client's connections and the outbox's file (a later job opens
        them again)."""
        await self.engine.aclose()
        self.outbox.close()


def create_app(
    config: JobsConfig,
    signing_key: SigningKey,
    meter: EnergyMeter,
    *,
    now_ms: Callable[[], int] = system_ms,
) -> Starlette:
    """The job endpoint app; `app.state.jobs` is its `JobService` (outbox, replay cache).

    `signing_key` is the provider's Ed25519 key, `meter` its energy meter, `now_ms` the
    clock for tickets and receipt times. The engine client is closed when the app shuts
    down.
    """
    cap_recursion()
    service = JobService(config, signing_key, meter, now_ms)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await service.aclose()

    async def chat_completions(request: Request) -> Response:
        return await service.handle("/chat/completions", request)

    async def completions(request: Request) -> Response:
        return await service.handle("/completions", request)

    async def cancel(request: Request) -> Response:
        return service.cancel(request)

    routes = [
        Route("/jobs/chat/completions", chat_completions, methods=["POST"]),
        Route("/jobs/completions", completions, methods=["POST"]),
        Route("/jobs/cancel", cancel, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    app.state.jobs = service
    return app
