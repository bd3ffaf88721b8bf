"""Forwarding an accepted job to the OpenAI-compatible engine and relaying its answer.

The engine is reached over HTTP with aiohttp (`engine_client.EngineClient`). Streams are
relayed as the engine sends them: the events that one read brought in go on in one write
(`protocol.sse.event_batches`), as the original bytes (events are split on the blank line,
and only their JSON is read for token ids and usage); the engine's `data: [DONE]` is held
back until the receipt event is sent. A stream that breaks off after tokens were delivered
gets an interrupted receipt for exactly those tokens, sent before the `event: error` (see
docs/agent-protocol.md). A stream the market cancels (`StreamCancel`, from `POST
/jobs/cancel`) ends the same way, with the reason `cancelled`: its engine request is closed,
which makes vLLM abort it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import aiohttp
from yarl import URL

from protocol.http_session import TRANSPORT_ERRORS
from protocol.messages import Receipt, Signed
from protocol.sse import EVENT_END, event_batches
from provider_agent.jobs.errors import JobError
from provider_agent.jobs.receipts import Observation, ReceiptIssuer
from provider_agent.jobs.tickets import AcceptedJob

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]"
_DATA = b"data: "
_JSON = {"Content-Type": "application/json"}


def upstream_payload(job: AcceptedJob) -> bytes:
    """The body sent to the engine: the buyer's, with token ids (and streamed usage) on."""
    body = dict(job.upstream_body)
    body["return_token_ids"] = True
    if job.stream:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {})}
        body["stream_options"]["include_usage"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def sse_error(code: str, message: str) -> bytes:
    """An `event: error` SSE event with the job endpoint's error body."""
    data = json.dumps({"error": {"code": code, "message": message}})
    return b"event: error\ndata: " + data.encode() + b"\n\n"


async def open_upstream(
    session: aiohttp.ClientSession, url: URL, body: bytes
) -> aiohttp.ClientResponse:
    """Send the request and return the open response; 502 (or the engine's 4xx) on failure."""
    try:
        response = await session.post(url, data=body, headers=_JSON, allow_redirects=False)
    except TRANSPORT_ERRORS as exc:
        raise JobError(502, "upstream_unreachable", f"engine unreachable: {exc!r}") from exc
    status = response.status
    if status >= 400:
        try:
            text = (await response.read())[:2000].decode("utf-8", "replace")
        except TRANSPORT_ERRORS as exc:
            text = f"(body unreadable: {exc!r})"
        finally:
            response.release()
        if status >= 500:
            raise JobError(502, "upstream_error", f"engine answered {status}: {text}")
        raise JobError(status, "upstream_rejected", text)
    return response


async def relay_json(
    response: aiohttp.ClientResponse,
    job: AcceptedJob,
    issuer: ReceiptIssuer,
    now_ms: Callable[[], int],
) -> bytes:
    """Read the whole (non-streamed) answer and return it with the signed receipt added."""
    try:
        raw = await response.read()
    except TRANSPORT_ERRORS as exc:
        raise JobError(502, "upstream_died", f"engine response broke off: {exc!r}") from exc
    finally:
        response.release()
    answered_at = now_ms()
    try:
        payload: dict[str, Any] = json.loads(raw)
        seen = Observation()
        for choice in payload.get("choices") or ():
            seen.add_choice(choice, answered_at)
        seen.add_usage(payload.get("usage"))
    except (ValueError, AttributeError, TypeError) as exc:
        raise JobError(502, "upstream_malformed", "engine response is not a completion") from exc
    envelope = issuer.issue(job, seen, answered_at)
    payload["receipt"] = envelope.model_dump(mode="json")
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _read_event(event: bytes, seen: Observation, now: int) -> str | None:
    """Record one event's token ids and usage; return an error message if it is one."""
    if not event.startswith(_DATA):
        return None
    payload = json.loads(event[len(_DATA) :].decode())
    if not isinstance(payload, dict):
        return "engine sent a non-object event"
    if "error" in payload:
        return f"engine error: {json.dumps(payload['error'])[:500]}"
    try:
        seen.add_prompt_ids(payload.get("prompt_token_ids"))
        for choice in payload.get("choices") or ():
            seen.add_choice(choice, now)
        seen.add_usage(payload.get("usage"))
    except (AttributeError, TypeError, KeyError) as exc:  # JSON, but not a completion chunk
        raise ValueError(f"not a completion chunk: {exc!r}") from exc
    return None


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE] (normally nothing) so the connection returns to the pool."""
    try:
        async for _ in chunks:
            pass
    except TRANSPORT_ERRORS:
        return


class StreamCancel:
    """The market's request to stop one streamed job: the engine's response is closed (vLLM
    aborts the request), so the relay's read breaks off and the stream ends as cancelled."""

    def __init__(self, response: aiohttp.ClientResponse, on_end: Callable[[], None]) -> None:
        """`on_end` runs once the relay is over, before the stream's last byte is sent."""
        self.requested = False
        self._response = response
        self.on_end = on_end

    def __call__(self) -> None:
        """Stop the job (once; later calls do nothing)."""
        if not self.requested:
            self.requested = True
            self._response.close()


_CANCELLED = ("cancelled", sse_error("cancelled", "the market cancelled the job"))


def _receipt_event(envelope: Signed[Receipt]) -> bytes:
    return b"event: receipt\ndata: " + envelope.model_dump_json().encode() + b"\n\n"


async def relay_stream(
    response: aiohttp.ClientResponse,
    job: AcceptedJob,
    issuer: ReceiptIssuer,
    now_ms: Callable[[], int],
    on_abort: Callable[[], None],
    cancel: StreamCancel | None = None,
) -> AsyncGenerator[bytes, None]:
    """Yield the engine's SSE events as they arrive, then the receipt event and [DONE].

    If the engine dies, errs or ends without [DONE], yield an interrupted receipt for the
    tokens already delivered (none if no token was), then an `event: error`, and stop
    without [DONE]. If the market goes away (the generator is closed or cancelled before
    the end), sign an interrupted receipt into the outbox only. A token counts as
    delivered once the chunk carrying it has been yielded and the consumer came back for
    more (docs/agent-protocol.md). Once `cancel` was called, the break that it causes ends
    the stream as an interrupted receipt with the reason `cancelled`, then its error.
    """
    seen = Observation()
    delivered = 0
    finished = False

    def interrupted(reason: str) -> bytes:
        try:
            envelope = issuer.issue_interrupted(job, seen, delivered, now_ms(), reason)
        except Exception:
            logger.exception("job %s: could not sign the interrupted receipt", job.ticket.job_id)
            on_abort()
            return b""
        return b"" if envelope is None else _receipt_event(envelope)

    try:
        chunks = response.content.iter_any()
        failure: tuple[str, bytes] | None = None
        out: list[bytes] = []
        try:
            async with aclosing(event_batches(chunks)) as batches:
                async for events in batches:
                    now = now_ms()
                    for event in events:
                        if event == DONE:
                            envelope = issuer.issue(job, seen, now)
                            finished = True
                            out.append(_receipt_event(envelope) + DONE + EVENT_END)
                            yield b"".join(out)
                            await _drain(chunks)
                            return
                        error = _read_event(event, seen, now)
                        if error is not None:
                            failure = ("engine_error", sse_error("upstream_error", error))
                            break
                        out.append(event + EVENT_END)
                    if failure is not None:
                        break
                    # Every event of a read goes on in one write, at once.
                    if out:
                        yield b"".join(out)
                        out = []
                        delivered = len(seen.token_ids)
                else:
                    failure = (
                        "engine_died",
                        sse_error("upstream_died", "engine stream ended without [DONE]"),
                    )
        except TRANSPORT_ERRORS as exc:
            logger.warning("job %s: engine stream broke off: %r", job.ticket.job_id, exc)
            message = f"engine stream broke off: {exc!r}"
            failure = ("engine_died", sse_error("upstream_died", message))
        except ValueError as exc:
            message = f"engine sent an unreadable event: {exc}"
            failure = ("engine_malformed", sse_error("upstream_malformed", message))
        if failure is not None and cancel is not None and cancel.requested:
            failure = _CANCELLED
        if failure is not None:
            if out:  # events read before the failure go out, and count as delivered
                yield b"".join(out)
                delivered = len(seen.token_ids)
            reason, error_event = failure
            finished = True
            yield interrupted(reason) + error_event
    except JobError as exc:  # [DONE] came, but the answer cannot back a receipt
        finished = True
        yield sse_error(exc.code, exc.message)
    finally:
        if not finished:
            interrupted("client_disconnected")
        response.release()  # unread rest: the connection is closed, not pooled
        if cancel is not None:
            cancel.on_end()
