"""HTTP routes of the settlement package."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["settlement"])
