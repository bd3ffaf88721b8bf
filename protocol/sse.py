"""Reading a server-sent event stream through httpx without one write per event.

Both relays (the market's towards the buyer, the agent's towards the market) read an SSE body
with httpx and pass events on. The engine and the agent write each event as its own HTTP
chunk, and several usually arrive in one socket read, yet httpx hands them out one chunk at a
time. `read_ahead` shows what is already read but not yet handed out, so a relay can hold an
event back while another whole one is waiting, and write them on together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


def raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The response body as it is read, undecoded unless it has a content encoding."""
    if "content-encoding" in response.headers:
        return response.aiter_bytes()
    return response.aiter_raw()


def read_ahead(response: httpx.Response) -> bytearray | None:
    """Bytes of an HTTP/1.1 response already read from its socket but not yet parsed.

    This looks into httpx's default transport (httpcore over h11), so it is pinned by a test
    (tests/protocol/test_sse.py) against the locked versions: an upgrade that moves these
    attributes fails that test instead of silently writing every event on its own. With any
    other transport it is None, and every chunk is written on as it comes.
    """
    stream = getattr(response.stream, "_stream", None)  # httpx's BoundAsyncStream
    stream = getattr(stream, "_httpcore_stream", None)  # httpx's AsyncResponseStream
    stream = getattr(stream, "_stream", None)  # httpcore's PoolByteStream
    connection = getattr(stream, "_connection", None)  # HTTP11ConnectionByteStream
    h11_state = getattr(connection, "_h11_state", None)
    data = getattr(getattr(h11_state, "_receive_buffer", None), "_data", None)
    return data if isinstance(data, bytearray) else None


def more_is_ready(buffered: bytearray | None) -> bool:
    """Whether a further whole event already sits in `read_ahead`'s buffer (no waiting)."""
    return buffered is not None and b"\n\n" in buffered
