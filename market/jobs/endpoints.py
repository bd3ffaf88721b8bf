"""HTTP routes of the jobs package: a buyer's own jobs, by its API key. Errors use the
market's body, as the buyer account routes do (docs/buyer-api.md), not OpenAI's envelope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from market.api_errors import MarketErrorRoute
from market.buyers.service import authenticate
from market.db import session_scope
from market.inference.auth import bearer_key
from market.jobs import service
from market.jobs.schemas import JobRead, JobSummary
from market.runtime import Runtime, get_runtime

router = APIRouter(tags=["jobs"], route_class=MarketErrorRoute)


@router.get("/jobs")
def list_jobs(
    key: Annotated[str, Depends(bearer_key)],
    runtime: Annotated[Runtime, Depends(get_runtime)],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> list[JobSummary]:
    """The caller's latest jobs, newest first, with tokens, charge and energy; `before` (the
    last id of a page) gives the page after it."""
    with session_scope(runtime.sessions) as session:
        buyer = authenticate(session, key)
        return service.buyer_history(session, buyer.address, limit, before)


@router.get("/jobs/{job_id}")
def get_job(
    job_id: str,
    key: Annotated[str, Depends(bearer_key)],
    runtime: Annotated[Runtime, Depends(get_runtime)],
) -> JobRead:
    """One of the caller's jobs, with its receipt (as signed) and what it was charged."""
    with session_scope(runtime.sessions) as session:
        buyer = authenticate(session, key)
        return service.get_job(session, buyer.address, job_id)
