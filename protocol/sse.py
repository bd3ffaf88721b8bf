"""Reading a server-sent event stream in the batches the socket delivers.

Both relays (the market's towards the buyer, the agent's towards the market) read an SSE body
and pass its events on. The engine and the agent write each event as its own HTTP chunk, and
several usually arrive in one socket read. The relays read the body with aiohttp's
`content.iter_any()`, which hands out everything received so far in one piece, and
`event_batches` cuts that into whole events: the events already received go on in one write,
and an event that arrives alone goes on at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

EVENT_END = b"\n\n"


async def event_batches(chunks: AsyncIterator[bytes]) -> AsyncGenerator[list[bytes], None]:
    """Whole events (without their blank line), one list for each read that completed any.

    Events are split on the blank line `\\n\\n` (the separator the engine and the agent
    write) and handed out as the original bytes. Bytes after the last blank line are held
    until a later read completes their event; a read that completes none yields nothing.
    When `chunks` ends, an unfinished event is dropped: a stream that breaks off mid-event
    has not delivered it. Errors raised by `chunks` pass through. A relay that stops early
    (at `[DONE]`, on a bad event) can `aclose()` it.
    """
    buffer = b""
    async for chunk in chunks:
        *events, buffer = (buffer + chunk).split(EVENT_END)
        if events:
            yield events
