"""Errors the job endpoint answers with, each a status and a stable code."""

from __future__ import annotations

from typing import Any


class JobError(Exception):
    """A request refused or failed; answered as `{"error": {"code", "message"}}`."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        """`status` is the HTTP status, `code` a stable snake_case string; `headers` extra
        response headers (e.g. `Retry-After`)."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"code": self.code, "message": self.message}}
