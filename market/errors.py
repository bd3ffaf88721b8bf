"""The market's exception tree: one base with a status code, a stable code and a message.

Services raise these; the HTTP layer turns any `MarketError` into one JSON body (`body()`),
or into OpenAI's error envelope on the OpenAI-compatible routes. Codes are stable strings that
clients may rely on; a test checks that every subclass has its own.
"""

from __future__ import annotations

from typing import Any

INTERNAL_ERROR = "The server had an error while processing your request. Sorry about that!"
"""What a 500 says (OpenAI's words); the traceback goes to the log."""


class MarketError(Exception):
    """Root of every error the market raises on purpose.

    Subclasses set `status_code` and `code`; an instance may override either, which is what
    the constructor's keyword arguments are for (rarely needed).
    """

    status_code: int = 500
    code: str = "market_error"
    job_id: str | None = None
    """The job the error ended, when one had been opened for the request (the OpenAI
    routes then name it in `x-job-id` and `x-request-id`)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        """The market API's error body: `{"error": {"code": ..., "message": ...}}`."""
        return {"error": {"code": self.code, "message": self.message}}


# -- generic ------------------------------------------------------------------------------


class InvalidRequestError(MarketError):
    """The input is well-formed JSON but not acceptable (bad address, negative amount, ...)."""

    status_code = 422
    code = "invalid_request"


class NotFoundError(MarketError):
    """The thing asked for does not exist (or is not the caller's to see)."""

    status_code = 404
    code = "not_found"


class ConflictError(MarketError):
    """The request contradicts the current state."""

    status_code = 409
    code = "conflict"


class AuthenticationError(MarketError):
    """No valid credentials."""

    status_code = 401
    code = "invalid_api_key"


class ForbiddenError(MarketError):
    """Valid credentials, but not for this: another buyer's key or address."""

    status_code = 403
    code = "forbidden"


# -- ledger -------------------------------------------------------------------------------


class InvalidAmountError(InvalidRequestError):
    """An amount is not a positive integer in base units (or breaks a documented bound)."""

    code = "invalid_amount"


class InsufficientFundsError(MarketError):
    """The buyer's available balance does not cover the hold asked for."""

    status_code = 402
    code = "insufficient_funds"

    def __init__(self, account: str, available: int, requested: int) -> None:
        super().__init__(f"{account} has {available} available, {requested} requested (base units)")
        self.account = account
        self.available = available
        self.requested = requested


class UnbalancedTransferError(MarketError):
    """A transfer's postings do not sum to zero; a programming error, never the caller's."""

    status_code = 500
    code = "unbalanced_transfer"


class IdempotencyConflictError(ConflictError):
    """An idempotency key was reused for a different movement of money."""

    code = "idempotency_conflict"


class HoldNotFoundError(NotFoundError):
    """No hold exists for the job."""

    code = "hold_not_found"


class HoldClosedError(ConflictError):
    """The hold was already settled or released in another way."""

    code = "hold_closed"


class ChargeExceedsHoldError(InvalidRequestError):
    """A charge is larger than the hold placed for the job, or a fee larger than the charge."""

    code = "charge_exceeds_hold"


class LedgerInconsistentError(MarketError):
    """Stored balances disagree with the postings they are derived from."""

    status_code = 500
    code = "ledger_inconsistent"


# -- buyers -------------------------------------------------------------------------------


class InvalidAddressError(InvalidRequestError):
    """Not an EVM address (20 bytes, hex), or a mixed-case one with a wrong checksum."""

    code = "invalid_address"


class BuyerNotFoundError(NotFoundError):
    """No buyer with that address."""

    code = "buyer_not_found"


class ApiKeyNotFoundError(NotFoundError):
    """No such API key for this buyer."""

    code = "api_key_not_found"


# -- buyer sign-in (signed requests) ------------------------------------------------------


class SignatureRequiredError(AuthenticationError):
    """No signed request, or one that cannot be read (bad base64, format or signature bytes)."""

    code = "signature_required"


class SignatureExpiredError(AuthenticationError):
    """The signed request's `expires_at` has passed."""

    code = "signature_expired"


class SignatureLifetimeError(AuthenticationError):
    """The signed request expires too far ahead (the market accepts at most a few minutes)."""

    code = "signature_lifetime_too_long"


class SignatureMismatchError(ForbiddenError):
    """The signed request is for another address, domain (chain, contract) or action."""

    code = "signature_mismatch"


class NonceReusedError(ConflictError):
    """The signed request's nonce was already used: a replay."""

    code = "nonce_reused"
