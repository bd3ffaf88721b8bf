"""The OpenAI-compatible routes: `/v1/models`, `/v1/chat/completions`, `/v1/completions`."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["openai"])
