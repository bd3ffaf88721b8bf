"""Errors of payment reviews."""

from __future__ import annotations

from market.errors import ConflictError, NotFoundError


class ReviewNotFoundError(NotFoundError):
    """No payment review with that id."""

    code = "review_not_found"


class ReviewClosedError(ConflictError):
    """The review was already released or voided: a decision is final."""

    code = "review_closed"
