"""`x-request-id` on every answer of the OpenAI-compatible routes, as OpenAI sends it (its
clients expose it as `response._request_id` and `APIStatusError.request_id`).

A request served by a provider is named by its job (the `x-job-id` the answer carries, also
on an error that came after a job was opened), so support can find it with
`GET /jobs/{job_id}`; any other answer gets a fresh `req_<32 hex digits>`. A client's own
`X-Request-Id` is never taken as the id; its `X-Client-Request-Id` (at most 512 printable
ASCII characters) is echoed back as `x-client-request-id`.

Set as the response starts, by a pure ASGI wrapper (no `BaseHTTPMiddleware`): per request
one closure and a scan of the few response headers. Answers of the routes, of FastAPI's
validation and of the app's error handlers (401, 404 unknown URL, 405, 413) all pass
through it; the 500 of an unhandled error is answered outside it, by
`market.inference.errors.unhandled_error`, which sets the headers itself.
"""

from __future__ import annotations

import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

JOB_ID_HEADER = "x-job-id"
"""Response header naming the job, for `GET /jobs/{job_id}`."""
REQUEST_ID_HEADER = "x-request-id"
CLIENT_REQUEST_ID_HEADER = "x-client-request-id"
CLIENT_REQUEST_ID_MAX = 512
PREFIX = "/v1"

_JOB = JOB_ID_HEADER.encode()
_REQUEST = REQUEST_ID_HEADER.encode()
_CLIENT = CLIENT_REQUEST_ID_HEADER.encode()


def fresh_request_id() -> str:
    """A new id for an answer that names no job."""
    return "req_" + os.urandom(16).hex()


def _client_request_id(request_headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The client's `X-Client-Request-Id`, if it is one that may be echoed."""
    for name, value in request_headers:
        if name == _CLIENT:
            if len(value) <= CLIENT_REQUEST_ID_MAX and value.isascii():
                return value if value.decode().isprintable() else None
            return None
    return None


def with_request_id(
    headers: list[tuple[bytes, bytes]], request_headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The response's headers plus `x-request-id` (its job id, else a fresh id) and the
    echoed `x-client-request-id`."""
    request_id = None
    for name, value in headers:
        if name == _JOB:
            request_id = value
            break
    out = [*headers, (_REQUEST, request_id or fresh_request_id().encode())]
    client = _client_request_id(request_headers)
    if client is not None:
        out.append((_CLIENT, client))
    return out


class RequestIdMiddleware:
    """Adds the request id headers to every HTTP answer under `/v1`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                message["headers"] = with_request_id(headers, scope["headers"])
            await send(message)

        await self.app(scope, receive, send_with_id)
