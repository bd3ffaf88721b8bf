"""`protocol.sse.event_batches`: whole events per read, from bytes and over loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web

from protocol.sse import event_batches

EVENTS = [f'data: {{"n":{i}}}'.encode() for i in range(5)]


async def _from(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _batches(chunks: Iterable[bytes]) -> list[list[bytes]]:
    async def go() -> list[list[bytes]]:
        return [batch async for batch in event_batches(_from(chunks))]

    return asyncio.run(go())


def test_events_split_across_chunks_come_whole() -> None:
    body = b"\n\n".join(EVENTS[:2]) + b"\n\n"
    chunks = [body[:3], body[3:12], body[12:-1], body[-1:]]
    assert _batches(chunks) == [[EVENTS[0]], [EVENTS[1]]]


def test_several_events_in_one_chunk_are_one_batch() -> None:
    chunks = [b"".join(e + b"\n\n" for e in EVENTS[:3]), EVENTS[3] + b"\n\n"]
    assert _batches(chunks) == [EVENTS[:3], [EVENTS[3]]]


def test_a_read_completing_no_event_yields_nothing() -> None:
    chunks = [EVENTS[0][:5], EVENTS[0][5:], b"\n", b"\n" + EVENTS[1][:4]]
    assert _batches(chunks) == [[EVENTS[0]]]


def test_trailing_partial_event_is_dropped() -> None:
    chunks = [EVENTS[0] + b"\n\n" + EVENTS[1], b"\n"]
    assert _batches(chunks) == [[EVENTS[0]]]
    assert _batches([]) == []
    assert _batches([EVENTS[2]]) == []


def test_events_keep_their_bytes_and_names() -> None:
    event = b"event: receipt\ndata: {}"
    assert _batches([event + b"\n\n" + b"data: [DONE]\n\n"]) == [[event, b"data: [DONE]"]]


async def _over_http() -> list[list[bytes]]:
    """Serve the events as a chunked SSE body, one HTTP chunk each: the first alone, then
    the other four written back to back once the client has the first; read with aiohttp."""
    first_read = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(EVENTS[0] + b"\n\n")
        await first_read.wait()
        for event in EVENTS[1:]:
            await response.write(event + b"\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    batches: list[list[bytes]] = []
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as response,
        ):
            async for batch in event_batches(response.content.iter_any()):
                batches.append(batch)
                first_read.set()
    finally:
        await runner.cleanup()
    return batches


def test_events_already_received_come_in_one_batch_over_http() -> None:
    batches = asyncio.run(_over_http())
    # The first event went on alone, without waiting for more; the four written together
    # (each its own HTTP chunk) came out of one read as one batch.
    assert batches == [[EVENTS[0]], EVENTS[1:]]
