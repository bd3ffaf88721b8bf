"""OpenAI's error envelope: what buyers' clients parse on the `/v1` routes.

`{"error": {"message", "type", "param", "code"}}` with the status OpenAI uses: 400 invalid
parameters, 401 bad key, 402 no balance, 404 unknown model, 503 no provider available (or
every provider tried at capacity, with `Retry-After`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from market.errors import INTERNAL_ERROR, MarketError
from market.inference.request_id import JOB_ID_HEADER, PREFIX, REQUEST_ID_HEADER, with_request_id

logger = logging.getLogger(__name__)


def envelope(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """One OpenAI-style error response."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


_VALUE_ERROR = "Value error, "
"""What pydantic puts before the message of a `ValueError` raised by a validator."""


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Invalid parameters: 400 with the first offending field named; a body that is not JSON
    at all: 400 as OpenAI words it, with where the parser stopped."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        ctx = first.get("ctx")
        reason = ctx.get("error") if isinstance(ctx, dict) else None
        message = (
            f"We could not parse the JSON body of your request: {reason or 'not JSON'}{where}."
        )
        return envelope(400, message, "invalid_request_error", "invalid_json")
    param = _param(loc)
    message = str(first.get("msg", "invalid request")).removeprefix(_VALUE_ERROR)
    if param:
        message = f"{param}: {message}"
    return envelope(400, message, "invalid_request_error", "invalid_parameter", param)


_TYPES = {
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_type(status: int) -> str:
    """OpenAI's error `type` for a status code."""
    if status >= 500:
        return "server_error"
    return _TYPES.get(status, "invalid_request_error")


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such route: 404, wrong method: 405), in OpenAI's envelope
    as OpenAI words them ("Invalid URL (POST /v1/embeddings)") rather than `{"detail"}`."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status in (404, 405):
        message = f"Invalid URL ({request.method} {request.url.path})"
        code = "unknown_url" if status == 404 else "method_not_allowed"
    else:
        message, code = str(exc.detail), None
    headers = dict(exc.headers) if exc.headers else None
    return envelope(status, message, openai_type(status), code, headers=headers)


async def market_error(request: Request, exc: Exception) -> JSONResponse:
    """The market's own errors, in OpenAI's envelope."""
    assert isinstance(exc, MarketError)
    param = getattr(exc, "param", None)
    headers = getattr(exc, "headers", None)
    if exc.job_id is not None:
        headers = {**(headers or {}), JOB_ID_HEADER: exc.job_id}
    status = exc.status_code
    type_ = getattr(exc, "error_type", None) or openai_type(status)
    return envelope(status, exc.message, type_, exc.code, param, headers)


async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: 500 in OpenAI's envelope and words, not Starlette's plain text. It answers from
    outside the request id middleware, so it sets `x-request-id` itself on the `/v1` routes
    and logs it beside the method and path (the server logs the traceback)."""
    response = envelope(500, INTERNAL_ERROR, "server_error", "internal_error")
    if request.url.path.startswith(PREFIX):
        headers = with_request_id(response.raw_headers, request.scope["headers"])
        response.raw_headers = headers
        request_id = dict(headers)[REQUEST_ID_HEADER.encode()].decode()
        logger.error("%s %s failed as %s: %r", request.method, request.url.path, request_id, exc)
    return response


# -- the engine's own errors ---------------------------------------------------------------

#: OpenAI's error types: an engine's `type` passes on only if it is one of them (vLLM's
#: `BadRequestError` is a class name, not a type OpenAI's clients know).
OPENAI_TYPES = frozenset(
    {*_TYPES.values(), "invalid_request_error", "not_found_error", "server_error", "api_error"}
)
#: The `"message": "..."` of an error body the agent cut short (it keeps the engine's first
#: 2,000 bytes), when the whole body is no longer JSON.
_MESSAGE = re.compile(r'"message"\s*:\s*("(?:[^"\\]|\\.)*")')
MESSAGE_CHARS = 2_000


PROVIDER_SIDE_STATUSES = frozenset({404, 408, 429})
"""Engine refusals that say more of the provider than of the request (the model is not
served there, the engine timed out or is busy): another provider may serve the request."""


@dataclass(frozen=True)
class EngineError:
    """An OpenAI-compatible engine's error as the buyer is told it: its own message, and its
    `type`, `code` (a string; vLLM's numeric code is only the status) and `param` when the
    engine gave them in OpenAI's terms. `status`: the 4xx the error stands for when it says
    so (vLLM's numeric `code`, or its `BadRequestError` type), which matters for an error
    sent inside a stream, where the HTTP status was already 200."""

    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None
    status: int | None = None

    @classmethod
    def of(cls, body: dict[str, Any]) -> EngineError | None:
        """From `{"error": {...}}` or vLLM's flat `{"object": "error", "message", ...}`."""
        if isinstance(body.get("error"), dict):
            body = body["error"]
        message = body.get("message")
        if not isinstance(message, str) or not message:
            return None
        type_, code, param = body.get("type"), body.get("code"), body.get("param")
        return cls(
            message[:MESSAGE_CHARS],
            type_ if type_ in OPENAI_TYPES else None,
            code if isinstance(code, str) and code else None,
            param if isinstance(param, str) and param else None,
            _client_status(code, type_),
        )


def _client_status(code: Any, type_: Any) -> int | None:
    """The 4xx an engine's error names: a numeric `code` (vLLM) from 400 to 499, else 400
    for a `BadRequestError` or `invalid_request_error` type; None for anything else."""
    if type(code) is int and 400 <= code < 500:
        return code
    return 400 if type_ in ("BadRequestError", "invalid_request_error") else None


def engine_error(text: str) -> tuple[str, EngineError] | None:
    """The engine's error inside a message of the agent's, which carries the engine's JSON
    body as it came (`upstream_rejected`), after a prefix (`engine answered 500: {...}`,
    `engine error: {...}`), or cut short: (the prefix, the error), or None when there is no
    engine error body in it."""
    start = text.find("{")
    if start < 0:
        return None
    prefix, raw = text[:start], text[start:]
    try:
        body = json.loads(raw)
    except ValueError:
        found = _MESSAGE.search(raw)
        if found is None:
            return None
        try:
            body = {"message": json.loads(found.group(1))}
        except ValueError:
            return None
    error = EngineError.of(body) if isinstance(body, dict) else None
    return None if error is None else (prefix, error)


# -- errors of the request path -----------------------------------------------------------


class ModelNotFoundError(MarketError):
    """No provider offers the model at all."""

    status_code = 404
    code = "model_not_found"


class NoProviderAvailableError(MarketError):
    """Providers offer the model, but none that passes the buyer's filters can take it now."""

    status_code = 503
    code = "no_provider_available"


class ProviderFailedError(MarketError):
    """Every provider tried failed before answering (unreachable, 5xx, refused the ticket)."""

    status_code = 502
    code = "provider_unavailable"


class ProvidersAtCapacityError(MarketError):
    """Every provider tried refused the job because it is serving its `max_concurrency`."""

    status_code = 503
    code = "providers_at_capacity"
    retry_after_s = 1

    @property
    def headers(self) -> dict[str, str]:
        """`Retry-After`, as the agents sent it."""
        return {"Retry-After": str(self.retry_after_s)}


class BuyerLeftError(MarketError):
    """The buyer closed the connection before the provider answered: the job was given up
    at no cost (nginx's 499; the buyer never reads it, the access log does)."""

    status_code = 499
    code = "client_closed_request"


class QuotaExceededError(MarketError):
    """The buyer's available balance does not cover the worst-case cost of the request."""

    status_code = 402
    code = "insufficient_quota"


class UpstreamRejectedError(MarketError):
    """The provider's engine refused the request itself (e.g. the prompt is too long): its
    status, its message, and its OpenAI `type`, `code` and `param` when it gave them."""

    status_code = 400
    code = "upstream_rejected"

    def __init__(self, message: str, *, status_code: int, engine: EngineError | None) -> None:
        if engine is None:
            super().__init__(message, status_code=status_code)
            self.error_type, self.param = None, None
            return
        super().__init__(engine.message, status_code=status_code, code=engine.code)
        self.error_type, self.param = engine.type, engine.param
