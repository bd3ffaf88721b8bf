"""The market's HTTP application: the buyer API, the provider API, health and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from market import background
from market.buyers.endpoints import router as buyers_router
from market.config import Settings, get_settings
from market.errors import MarketError
from market.health import router as health_router
from market.inference import errors as openai_errors
from market.inference.endpoints import router as inference_router
from market.inference.request_id import RequestIdMiddleware
from market.jobs.endpoints import router as jobs_router
from market.metrics import registry_for
from market.metrics import router as metrics_router
from market.providers.endpoints import router as providers_router
from market.runtime import Runtime
from market.settlement.endpoints import router as settlement_router
from protocol.recursion import cap_recursion


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Builds the app; the runtime is built at start-up unless one is given (tests)."""
    cap_recursion()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = runtime or Runtime.build(settings or get_settings())
        try:
            async with background.running(app.state.runtime):
                yield
        finally:
            await app.state.runtime.aclose()

    app = FastAPI(title="Joule Market", version="0.1.0", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, openai_errors.validation_error)
    app.add_exception_handler(MarketError, openai_errors.market_error)
    app.add_exception_handler(StarletteHTTPException, openai_errors.http_error)
    app.add_exception_handler(Exception, openai_errors.unhandled_error)  # a bug: still a 500
    app.add_middleware(RequestIdMiddleware)  # `x-request-id` on the OpenAI routes' answers
    app.include_router(inference_router)  # first: routes are matched in order
    app.include_router(health_router)
    app.include_router(providers_router)
    app.include_router(buyers_router)
    app.include_router(jobs_router)
    app.include_router(settlement_router)
    app.include_router(metrics_router)
    app.state.metrics = registry_for(lambda: getattr(app.state, "runtime", None))
    return app
