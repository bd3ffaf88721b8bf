"""`Departure`: a client that leaves cuts short only the waits marked cancellable."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message

from protocol.disconnect import ClientGone, Departure

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Connection:
    """An ASGI `receive` whose client leaves when `leave()` is called."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()

    async def receive(self) -> Message:
        return await self.messages.get()

    def leave(self) -> None:
        self.messages.put_nowait({"type": "http.disconnect"})


async def test_a_wait_is_cut_short_when_the_client_leaves() -> None:
    connection = Connection()
    async with Departure(connection.receive) as departure:
        asyncio.get_running_loop().call_later(0.05, connection.leave)
        with pytest.raises(ClientGone):
            async with departure.cancellable():
                await asyncio.sleep(30)
        assert departure.gone


async def test_work_outside_a_cancellable_wait_finishes_and_the_next_wait_refuses() -> None:
    connection = Connection()
    finished = False
    async with Departure(connection.receive) as departure:
        connection.leave()
        await asyncio.sleep(0.05)  # e.g. a database transaction: not cut short
        finished = True
        with pytest.raises(ClientGone):
            async with departure.cancellable():
                pytest.fail("entered a wait after the client left")
    assert finished


async def test_more_body_is_not_a_departure() -> None:
    connection = Connection()
    async with Departure(connection.receive) as departure:
        connection.messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        async with departure.cancellable():
            await asyncio.sleep(0.05)
        assert not departure.gone


async def test_a_cancellation_from_elsewhere_is_not_taken_for_the_client_leaving() -> None:
    connection = Connection()

    async def serve() -> None:
        async with Departure(connection.receive) as departure, departure.cancellable():
            await asyncio.sleep(30)

    task = asyncio.create_task(serve())
    await asyncio.sleep(0.05)
    task.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_watch_ends_with_the_block() -> None:
    connection = Connection()
    async with Departure(connection.receive):
        pass
    await asyncio.sleep(0)
    connection.leave()  # nobody is watching: nothing is cancelled, nothing is read
    await asyncio.sleep(0.05)
    assert connection.messages.qsize() == 1
