"""What vLLM's `GET /v1/models` says of the served model: its context length.

vLLM lists each served model with `max_model_len`, the most tokens (prompt and completion
together) it serves in one request (`--max-model-len`, else the model's own). The engine's
supervisor reads it with each health probe and the agent sends it in its registration as
`context_length`; an engine that does not report it (or reports something that is not a
positive integer) has none, never a guessed one.
"""

from __future__ import annotations

from typing import Any


def served_context_length(models: Any, served_model: str) -> int | None:
    """`max_model_len` of `served_model` in a `/v1/models` body; None when the body does not
    list the model or gives it no positive integer `max_model_len`."""
    data = models.get("data") if isinstance(models, dict) else None
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and entry.get("id") == served_model:
            length = entry.get("max_model_len")
            return length if type(length) is int and length > 0 else None
    return None
