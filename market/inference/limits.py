"""A cap on request body size for the `/v1` routes, enforced before the body is parsed.

A declared `Content-Length` over the cap is refused at once; a chunked body is counted as
it arrives and refused as soon as it passes the cap, so an oversized body is never held
whole in memory nor handed to the JSON parser.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.types import Message

from market.inference.errors import envelope

MAX_BODY_BYTES = 4 * 1024 * 1024


CODE = "request_too_large"


class _BodyTooLarge(HTTPException):
    """Raised from inside body reading; an `HTTPException` so FastAPI lets it through."""

    def __init__(self) -> None:
        super().__init__(status_code=413)


def _too_large() -> Response:
    message = f"The request body exceeds the {MAX_BODY_BYTES} byte limit."
    return envelope(413, message, "invalid_request_error", CODE)


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


class LimitedBodyRoute(APIRoute):
    """An `APIRoute` that answers 413 (OpenAI's envelope) for bodies over `MAX_BODY_BYTES`."""

    def body_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The handler the cap wraps: FastAPI's own, unless a subclass brings one."""
        return super().get_route_handler()

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = self.body_handler()

        async def limited(request: Request) -> Response:
            declared = _declared_length(request)
            if declared is not None and declared > MAX_BODY_BYTES:
                return _too_large()
            received = 0
            receive = request.receive

            async def counted() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > MAX_BODY_BYTES:
                        raise _BodyTooLarge
                return message

            try:
                return await handler(Request(request.scope, counted))
            except _BodyTooLarge:
                return _too_large()

        return limited
