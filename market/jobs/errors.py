"""Errors of the jobs package (all `MarketError`s, answered in OpenAI's envelope on /v1)."""

from __future__ import annotations

import enum

from market.errors import MarketError, NotFoundError


class JobNotFoundError(NotFoundError):
    """No job with that id belongs to the caller."""

    code = "job_not_found"


class RejectReason(enum.StrEnum):
    """Why a receipt was refused (stored with it in `rejected_receipts`)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    TICKET_MISMATCH = "ticket_mismatch"
    USAGE_MISSING = "usage_missing"
    USAGE_MISMATCH = "usage_mismatch"
    OUTPUT_DIGEST_MISMATCH = "output_digest_mismatch"
    DELIVERED_MISMATCH = "delivered_mismatch"
    """An interrupted receipt's token count differs from the tokens relayed to the buyer."""
    UNEXPECTED_STATUS = "unexpected_status"
    """An interrupted receipt where only a complete one may come (or the reverse)."""


class ReceiptRejectedError(MarketError):
    """The provider's receipt is missing, unreadable, badly signed or disagrees with the job."""

    status_code = 502
    code = "invalid_receipt"

    def __init__(self, message: str, reason: RejectReason = RejectReason.MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason
