"""HTTP routes of the providers package."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["providers"])
