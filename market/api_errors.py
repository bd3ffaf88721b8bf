"""The market's own error body on its own routes (not OpenAI's envelope).

The app's global handlers answer in OpenAI's envelope, because the OpenAI-compatible routes
are what most clients call. Routers of the market's own API (buyers, settlement, ...) use
`MarketErrorRoute`, which answers `MarketError`s, invalid requests and unexpected errors (500
`internal_error`) in `MarketError.body()`.

The route turns the error into a response inside FastAPI's dependency stacks, so a `yield`
dependency never sees it: a writing route takes its session from `transaction`, below, which
rolls back when the route marked the request as failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from market.errors import INTERNAL_ERROR, InvalidRequestError, MarketError
from market.runtime import Runtime, get_runtime

_FAILED = "market_error_answered"
log = logging.getLogger(__name__)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class MarketErrorRoute(APIRoute):
    """A route that answers `MarketError`s in the market's own error body (not OpenAI's)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except MarketError as exc:
                setattr(request.state, _FAILED, True)
                return JSONResponse(status_code=exc.status_code, content=exc.body())
            except RequestValidationError as exc:
                setattr(request.state, _FAILED, True)
                error = InvalidRequestError(_validation_message(exc))
                return JSONResponse(status_code=error.status_code, content=error.body())
            except HTTPException:  # FastAPI's own (a body it cannot parse: 400): the app's
                raise
            except Exception:  # a bug: 500 in this body too, the traceback in the log
                setattr(request.state, _FAILED, True)
                log.exception("%s %s failed", request.method, request.url.path)
                bug = MarketError(INTERNAL_ERROR, code="internal_error")
                return JSONResponse(status_code=500, content=bug.body())

        return handle


def transaction(
    request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> Iterator[Session]:
    """The request's transaction on a `MarketErrorRoute`: commits unless the route failed.

    Use it with `Depends(transaction, scope="function")`, so that it commits before the
    response is sent.
    """
    session = runtime.sessions()
    try:
        yield session
        if getattr(request.state, _FAILED, False):
            session.rollback()
        else:
            session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
