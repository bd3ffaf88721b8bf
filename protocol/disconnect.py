"""Noticing that the client of an ASGI request has gone, while the server still waits on
someone else for the answer.

Uvicorn does not cancel a handler whose client closed the connection: a market whose buyer
hung up would wait for the provider's answer and charge it, an agent whose market gave up
would have its engine compute the job to the end, for nobody. `Departure` watches the
request's connection (`receive`, its body already read) in a task of its own; a wait on the
network wrapped in `cancellable()` is cancelled when the client leaves and raises
`ClientGone`, and so does entering one after the client left. Work outside those windows
(a database transaction, signing) is never cancelled by it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from starlette.types import Receive


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


class Departure:
    """`async with Departure(receive) as departure:` watches the connection for the block."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.gone = False
        """Whether the client has closed the connection."""
        self._waiting: asyncio.Task[object] | None = None
        self._cancelled = False
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Departure:
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._waiting is not None:
            self._cancelled = True
            self._waiting.cancel()

    @asynccontextmanager
    async def cancellable(self) -> AsyncIterator[None]:
        """The block is cancelled if the client leaves while it runs: `ClientGone` is raised
        in its place (at once if the client has already left). Only for waits whose
        cancellation undoes nothing half done, such as a request to another server."""
        if self.gone:
            raise ClientGone
        task = asyncio.current_task()
        assert task is not None
        self._waiting = task
        try:
            yield
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
            self._cancelled = False
            task.uncancel()
            raise ClientGone from None
        finally:
            self._waiting = None
