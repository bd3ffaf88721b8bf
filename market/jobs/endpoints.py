"""HTTP routes of the jobs package."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["jobs"])
