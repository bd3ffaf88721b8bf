"""Forwarding an accepted job to the OpenAI-compatible engine and relaying its answer.

Streams are relayed event by event as the engine sends them (events are split on the
blank line, forwarded as the original bytes, and only their JSON is read for token ids
and usage); the engine's `data: [DONE]` is held back until the receipt event is sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from provider_agent.jobs.errors import JobError
from provider_agent.jobs.receipts import Observation, ReceiptIssuer
from provider_agent.jobs.tickets import AcceptedJob

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]"
_DATA = b"data: "


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


async def open_upstream(client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
    """Send the request and return the open response; 502 (or the engine's 4xx) on failure."""
    request = client.build_request(
        "POST", path, content=body, headers={"content-type": "application/json"}
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise JobError(502, "upstream_unreachable", f"engine unreachable: {exc!r}") from exc
    if response.status_code >= 400:
        text = (await response.aread())[:2000].decode("utf-8", "replace")
        await response.aclose()
        if response.status_code >= 500:
            raise JobError(502, "upstream_error", f"engine answered {response.status_code}: {text}")
        raise JobError(response.status_code, "upstream_rejected", text)
    return response


async def relay_json(
    response: httpx.Response,
    job: AcceptedJob,
    issuer: ReceiptIssuer,
    now_ms: Callable[[], int],
) -> bytes:
    """Read the whole (non-streamed) answer and return it with the signed receipt added."""
    try:
        raw = await response.aread()
    except httpx.HTTPError as exc:
        raise JobError(502, "upstream_died", f"engine response broke off: {exc!r}") from exc
    finally:
        await response.aclose()
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
    payload = json.loads(event[len(_DATA) :])
    if not isinstance(payload, dict):
        return "engine sent a non-object event"
    if "error" in payload:
        return f"engine error: {json.dumps(payload['error'])[:500]}"
    for choice in payload.get("choices") or ():
        seen.add_choice(choice, now)
    seen.add_usage(payload.get("usage"))
    return None


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE] (normally nothing) so the connection returns to the pool."""
    try:
        async for _ in chunks:
            pass
    except httpx.HTTPError:
        return


async def relay_stream(
    response: httpx.Response,
    job: AcceptedJob,
    issuer: ReceiptIssuer,
    now_ms: Callable[[], int],
    on_abort: Callable[[], None],
) -> AsyncIterator[bytes]:
    """Yield the engine's SSE events as they arrive, then the receipt event and [DONE].

    If the engine dies, errs or ends without [DONE], yield an `event: error` and stop:
    no receipt and no [DONE] (the job failed; see docs/agent-protocol.md).
    """
    seen = Observation()
    buffer = b""
    completed = False
    try:
        chunks = response.aiter_bytes()
        async for chunk in chunks:
            buffer += chunk
            if b"\n\n" not in buffer:
                continue
            *events, buffer = buffer.split(b"\n\n")
            now = now_ms()
            out: list[bytes] = []
            for event in events:
                if event == DONE:
                    envelope = issuer.issue(job, seen, now)
                    completed = True
                    receipt = envelope.model_dump_json().encode()
                    out.append(b"event: receipt\ndata: " + receipt + b"\n\n" + DONE + b"\n\n")
                    yield b"".join(out)
                    await _drain(chunks)
                    return
                error = _read_event(event, seen, now)
                if error is not None:
                    out.append(sse_error("upstream_error", error))
                    yield b"".join(out)
                    return
                out.append(event + b"\n\n")
            yield b"".join(out)
        yield sse_error("upstream_died", "engine stream ended without [DONE]")
    except httpx.HTTPError as exc:
        logger.warning("job %s: engine stream broke off: %r", job.ticket.job_id, exc)
        yield sse_error("upstream_died", f"engine stream broke off: {exc!r}")
    except JobError as exc:
        yield sse_error(exc.code, exc.message)
    except ValueError as exc:
        yield sse_error("upstream_malformed", f"engine sent an unreadable event: {exc}")
    finally:
        if not completed:
            on_abort()
        await response.aclose()
