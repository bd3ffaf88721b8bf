"""Errors of the jobs package (all `MarketError`s, answered in OpenAI's envelope on /v1)."""

from __future__ import annotations

from market.errors import MarketError, NotFoundError


class JobNotFoundError(NotFoundError):
    """No job with that id belongs to the caller."""

    code = "job_not_found"


class ReceiptRejectedError(MarketError):
    """The provider's receipt is missing, unreadable, badly signed or disagrees with the job."""

    status_code = 502
    code = "invalid_receipt"
