"""`protocol.sse` against the locked httpx over a real loopback HTTP/1.1 connection."""

from __future__ import annotations

import asyncio
from http.server import BaseHTTPRequestHandler

import httpx

from protocol.sse import more_is_ready, raw_chunks, read_ahead
from tests.support.http_server import serving

EVENTS = [f'data: {{"n":{i}}}\n\n'.encode() for i in range(5)]


class _Burst(BaseHTTPRequestHandler):
    """Five events, each its own HTTP chunk, all sent in one write."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS) + b"0\r\n\r\n"
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def _read(url: str) -> tuple[list[bytes], list[bool]]:
    chunks: list[bytes] = []
    ready: list[bool] = []
    async with httpx.AsyncClient() as client, client.stream("GET", url) as response:
        buffered = read_ahead(response)
        assert buffered is not None, "httpx's default transport no longer exposes its buffer"
        async for chunk in raw_chunks(response):
            chunks.append(chunk)
            ready.append(more_is_ready(buffered))
    return chunks, ready


def test_read_ahead_sees_the_events_already_read() -> None:
    with serving(_Burst) as url:
        chunks, ready = asyncio.run(_read(url))
    assert b"".join(chunks) == b"".join(EVENTS)
    # One write brought all five: while handing out the first four, the rest is buffered.
    assert len(chunks) == len(EVENTS)
    assert ready[:-1] == [True] * (len(EVENTS) - 1)
    assert ready[-1] is False


def test_other_transports_give_none() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"data: 1\n\n"))

    async def run() -> bytearray | None:
        async with (
            httpx.AsyncClient(transport=transport) as client,
            client.stream("GET", "http://x") as response,
        ):
            return read_ahead(response)

    assert asyncio.run(run()) is None
    assert more_is_ready(None) is False
