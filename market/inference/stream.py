"""Relaying an agent's event stream to the buyer as OpenAI would send it.

Events pass through as the original bytes, minus the engine's `token_ids` (cut out with a
byte pattern, collected to check the receipt's output digest). Only the usage chunk is
parsed and rewritten: it is held back until the receipt has been verified and charged, then
sent with `usage.receipt`, `usage.energy` and an `energy` block (or dropped if the buyer did
not ask for usage), then `data: [DONE]`. A failure ends the stream with OpenAI's error event
and releases the hold, unless the agent sent an interrupted receipt before its `event: error`:
that receipt is verified against the tokens relayed to the buyer and charged for exactly
those (the stream still ends with the error event). Events before a receipt are sent on to
the buyer before the receipt is charged, so only tokens the buyer was sent are paid for
(unless the buyer left, below).

The relay starts once the agent has sent its first output token (`StreamRelay.first_token`):
a stream that fails before then has sent the buyer nothing and costs nothing, so the job goes
to the next provider as one that failed to answer would, unless the engine's error says the
request itself is at fault (a 4xx but 404, 408 and 429): the buyer then gets that error with
its status, as for a request not streamed.

A buyer who disconnects mid-stream does not cut the relay off (`RelayResponse`): the job is
cancelled at the agent (`POST /jobs/cancel`), which stops the engine and ends the stream
with an interrupted receipt (`cancelled`) for the tokens it had sent. The relay reads on,
sending nothing, and charges that receipt like any interrupted one, for the tokens the
market read; a stream that has not ended `stream_cancel_wait_s` after the buyer left is cut
off and its hold released.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from market.errors import MarketError
from market.inference.agents import cancel_job
from market.inference.attempt import Attempt, Settled
from market.inference.errors import (
    PROVIDER_SIDE_STATUSES,
    EngineError,
    UpstreamRejectedError,
    engine_error,
    openai_type,
)
from market.inference.request_id import JOB_ID_HEADER
from protocol.http_session import TRANSPORT_ERRORS
from protocol.sse import event_batches

DONE = b"data: [DONE]"
_DATA = b"data: "
_RECEIPT = b"event: receipt\n"
_ERROR = b"event: error\n"
_IDS = rb'(?:prompt_)?token_ids"\s*:\s*(?:\[[0-9,\s]*\]|null)'
#: `"token_ids":[...]` (or `prompt_token_ids`) with the comma that joins it to its object.
_TOKEN_IDS = re.compile(rb',\s*"' + _IDS + rb'|"' + _IDS + rb"\s*,?")
_OUTPUT_IDS = re.compile(rb'(?<!prompt_)token_ids"\s*:\s*\[([0-9,\s]*)\]')
#: The usual case, one choice's `,"token_ids":[...]` and nothing else of the kind: one search
#: finds both what to collect and what to cut.
_ONE_OUTPUT_IDS = re.compile(rb',\s*"token_ids"\s*:\s*\[([0-9,\s]*)\]')
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def error_event(
    message: str, code: str | None, type_: str = "server_error", param: str | None = None
) -> bytes:
    """OpenAI's in-stream error, which the official clients raise as `APIError`."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _agent_error(event: bytes) -> tuple[str, bytes, EngineError | None]:
    """The agent's `event: error`: the job's failure reason, the buyer's error event, and the
    engine's own error when the agent's carries one. The buyer's event then passes that on
    (its message, and its OpenAI type, code and param if it gave them); otherwise it names
    only the agent's code, since the agent's message may hold its internals."""
    data = event.split(_DATA, 1)[-1]
    try:
        error = json.loads(data)["error"]
        code, message = error.get("code"), error.get("message")
    except (ValueError, KeyError, TypeError, AttributeError):
        reason = "provider stream failed"
        return reason, error_event("The provider's stream failed.", "provider_stream_failed"), None
    reason = f"provider stream failed: {code}: {message}"
    found = engine_error(message) if isinstance(message, str) else None
    if found is None:
        said = f" ({code})" if isinstance(code, str) and code.isidentifier() else ""
        buyer = error_event(f"The provider's stream failed{said}.", "provider_stream_failed")
        return reason, buyer, None
    engine = found[1]
    type_ = engine.type or openai_type(engine.status or 500)
    buyer = error_event(engine.message, engine.code or "upstream_error", type_, engine.param)
    return reason, buyer, engine


def _refusal(engine: EngineError | None) -> UpstreamRejectedError | None:
    """The buyer's error when the engine's says the request itself is at fault."""
    if engine is None or engine.status is None or engine.status in PROVIDER_SIDE_STATUSES:
        return None
    return UpstreamRejectedError(engine.message, status_code=engine.status, engine=engine)


def _tokenless(event: bytes) -> bool:
    """A data event without output tokens (the role chunk that opens a chat stream): a
    stream that fails after it has still delivered nothing."""
    if not event.startswith(_DATA) or event == DONE:
        return False
    return not any(ids.strip() for ids in _OUTPUT_IDS.findall(event))


def _status(envelope: bytes) -> str | None:
    """The status a receipt envelope claims (checked, with its signature, on settlement)."""
    try:
        status = json.loads(envelope)["message"]["status"]
    except (ValueError, KeyError, TypeError):
        return None
    return status if isinstance(status, str) else None


class StreamRelay:
    """Turns the agent's stream into the buyer's, settling or releasing the job at its end."""

    def __init__(
        self, response: aiohttp.ClientResponse, attempt: Attempt, include_usage: bool
    ) -> None:
        self.response = response
        self.attempt = attempt
        self.include_usage = include_usage
        self.token_ids: list[int] = []
        self.usage_chunk: dict[str, Any] | None = None
        self.settled: Settled | None = None
        self.interrupted = False
        self.buyer_gone = False
        self._batches = event_batches(response.content.iter_any())
        self._first: list[bytes] = []
        """Events read by `first_token`, not yet relayed."""
        self.rejected: UpstreamRejectedError | None = None
        """The engine's refusal of the request, when `first_token` met one."""

    async def first_token(self) -> str | None:
        """Reads the agent's events up to the first that carries an output token (or is not
        a data event), keeping them for the buyer. Returns why the stream failed if it did
        before that: the buyer has been sent nothing and no token is paid for, so the job
        may go to another provider, unless the engine refused the request itself (an error
        event that names a 4xx, as vLLM sends for an error it meets once streaming, other
        than `PROVIDER_SIDE_STATUSES`): that is the buyer's error wherever it is sent
        (`rejected`)."""
        try:
            async for batch in self._batches:
                for index, event in enumerate(batch):
                    if event.startswith(_ERROR):
                        reason, _, engine = _agent_error(event)
                        self.rejected = _refusal(engine)
                        return reason
                    if not _tokenless(event):
                        self._first.extend(batch[index:])
                        return None
                    self._first.append(event)
        except TRANSPORT_ERRORS as exc:
            return f"provider stream broke off before its first token: {exc!r}"
        return "provider stream ended before its first token"

    async def _read(self) -> AsyncGenerator[list[bytes], None]:
        """The agent's event batches, starting with those `first_token` read."""
        if self._first:
            yield self._first
        async for batch in self._batches:
            yield batch

    async def events(self) -> AsyncIterator[bytes]:
        """The buyer's SSE bytes, one write per batch of events read from the agent at once
        (`protocol.sse.event_batches`): an event that arrives alone is written at once."""
        out: list[bytes] = []
        batches = self._read()
        try:
            async for batch in batches:
                for event in batch:
                    if out and event.startswith(_RECEIPT):
                        yield b"".join(out)  # relayed before any charge
                        out = []
                    if await self._handle(event, out):
                        yield b"".join(out)
                        return
                if out:
                    yield b"".join(out)
                    out = []
            await self.attempt.fail("provider stream ended without [DONE]")
            out.append(error_event("The provider's stream ended early.", "provider_stream_ended"))
        except TRANSPORT_ERRORS as exc:
            await self.attempt.fail(f"provider stream broke off: {exc!r}")
            out.append(error_event("The provider's stream broke off.", "provider_stream_broken"))
        except MarketError as exc:
            await self.attempt.fail(exc.message)
            out.append(error_event(exc.message, exc.code))
        finally:
            await batches.aclose()  # now, not when collected
            await self._batches.aclose()
        yield b"".join(out)

    async def _handle(self, event: bytes, out: list[bytes]) -> bool:
        """Appends what the buyer gets for one event; True once the stream is over."""
        if event.startswith(_DATA):
            if event == DONE:
                return self._finish(out)
            if b'"usage":{' in event and self._hold_usage(event):
                return False
            if b"token_ids" in event:
                event = self._cut_token_ids(event)
            out.append(event + b"\n\n")
        elif event.startswith(_RECEIPT):
            envelope = event[len(_RECEIPT) :].split(_DATA, 1)[-1]
            usage = self.usage_chunk["usage"] if self.usage_chunk else None
            interrupted = _status(envelope) == "interrupted"
            self.settled = await self.attempt.settle(
                envelope, usage, self.token_ids, interrupted=interrupted
            )
            self.interrupted = interrupted
        elif event.startswith(_ERROR):
            reason, buyer_event, _ = _agent_error(event)
            await self.attempt.fail(reason)
            out.append(buyer_event)
            return True
        return False

    def _cut_token_ids(self, event: bytes) -> bytes:
        """The event without its token ids, which are collected."""
        found = _ONE_OUTPUT_IDS.search(event) if event.count(b"token_ids") == 1 else None
        if found is not None:
            self._collect(found.group(1))
            return event[: found.start()] + event[found.end() :]
        for ids in _OUTPUT_IDS.findall(event):
            self._collect(ids)
        return _TOKEN_IDS.sub(b"", event)

    def _collect(self, ids: bytes) -> None:
        """Adds the ids of one `[...]` body (digits, commas, blanks)."""
        try:
            self.token_ids.extend(map(int, ids.split(b",")))
        except ValueError:  # `[]`, or stray commas
            self.token_ids.extend(int(i) for i in ids.split(b",") if i.strip())

    def _hold_usage(self, event: bytes) -> bool:
        payload = json.loads(event[len(_DATA) :])
        if payload.get("choices"):  # usage riding on a content chunk: pass it through
            return False
        self.usage_chunk = payload
        return True

    def _finish(self, out: list[bytes]) -> bool:
        if self.interrupted:
            message = "provider ended an interrupted stream"
            out.append(error_event(message, "provider_stream_failed"))
            return True
        if self.settled is None:
            raise_missing = "provider ended the stream without a receipt"
            out.append(error_event(raise_missing, "invalid_receipt"))
            return True
        if self.include_usage and self.usage_chunk is not None:
            usage = {**self.usage_chunk["usage"], **self.settled.usage_extension()}
            chunk = {**self.usage_chunk, "usage": usage, "energy": self.settled.energy}
            chunk["provider"] = self.attempt.provider_block()
            out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
        out.append(DONE + b"\n\n")
        return True

    async def buyer_left(self) -> None:
        """The buyer disconnected: nothing more is sent to them and, unless the job has
        ended, it is cancelled at the agent (the relay reads on for the receipt)."""
        self.buyer_gone = True
        attempt = self.attempt
        if not attempt.finished and attempt.ticket_header is not None:
            agents = attempt.runtime.agents
            await cancel_job(agents, attempt.offer.job_url, attempt.ticket_header)

    async def close(self, reason: str | None = None) -> None:
        """Releases the hold unless the receipt was charged (the job failed for `reason`, if
        given), and the agent's response: its connection goes back to the pool if the body
        was read to its end, else is closed."""
        try:
            await self._batches.aclose()
            self.response.release()
        finally:
            if reason is not None:
                await self.attempt.close(reason)
            elif self.buyer_gone:
                await self.attempt.close("the buyer left and the stream did not end in time")
            else:
                await self.attempt.close()


class RelayResponse(StreamingResponse):
    """A streaming response that ends its job whatever happens, even if never iterated.

    Unlike Starlette's, it is not cancelled when the buyer disconnects: the relay is told
    (`StreamRelay.buyer_left`) and runs on, its writes dropped, for at most
    `stream_cancel_wait_s`."""

    def __init__(self, relay: StreamRelay) -> None:
        headers = {**SSE_HEADERS, JOB_ID_HEADER: relay.attempt.order.job_id}
        super().__init__(relay.events(), media_type="text/event-stream", headers=headers)
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self.relay

        async def to_buyer(message: Message) -> None:
            if not relay.buyer_gone:
                await send(message)

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_buyer, receive, group.cancel_scope)
                await self.stream_response(to_buyer)
                group.cancel_scope.cancel()
        finally:
            await relay.close()

    async def _watch_buyer(self, receive: Receive, stream: anyio.CancelScope) -> None:
        """Waits for the buyer to disconnect, then cancels the job and gives the relay
        `stream_cancel_wait_s` to end before it is cut off."""
        while (await receive())["type"] != "http.disconnect":
            pass
        relay = self.relay
        with anyio.move_on_after(relay.attempt.runtime.settings.stream_cancel_wait_s):
            await relay.buyer_left()
            await anyio.sleep_forever()
        stream.cancel()
