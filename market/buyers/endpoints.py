"""HTTP routes of the buyers package."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["buyers"])
