"""Errors of the providers package, under the market's one error tree (`market.errors`)."""

from __future__ import annotations

from market.errors import ConflictError, InvalidRequestError, MarketError, NotFoundError


class MalformedProviderMessageError(InvalidRequestError):
    """A signed provider message does not parse or cannot be encoded canonically."""

    code = "malformed_provider_message"


class InvalidOfferError(InvalidRequestError):
    """The registration's offer lacks something the market needs or breaks a bound."""

    code = "invalid_offer"


class ProviderSignatureError(MarketError):
    """The signature does not verify, or the message is signed by another key."""

    status_code = 401
    code = "bad_provider_signature"


class ProviderWrongDomainError(MarketError):
    """The message names another chain or settlement contract than the market's."""

    status_code = 403
    code = "wrong_domain"


class ProviderKeyNotBoundError(MarketError):
    """The Ed25519 key is not the one bound on-chain to the provider's EVM address."""

    status_code = 403
    code = "provider_key_not_bound"


class ProviderStakeTooLowError(MarketError):
    """The provider is not an active provider on-chain or stakes less than the minimum."""

    status_code = 403
    code = "provider_stake_too_low"


class ProviderSuspendedError(MarketError):
    """The market suspended this provider; it is not taken back by re-registering."""

    status_code = 403
    code = "provider_suspended"


class MessageExpiredError(MarketError):
    """The message's validity window has passed (or is longer than the market allows)."""

    status_code = 410
    code = "message_expired"


class MessageNotYetValidError(InvalidRequestError):
    """The message claims to be issued later than the market's clock allows."""

    code = "message_not_yet_valid"


class ReplayedMessageError(ConflictError):
    """A registration or heartbeat not newer than the last one accepted from the provider."""

    code = "replayed_message"


class BrokenAttestationChainError(ConflictError):
    """An attestation does not follow the provider's last one (gap, reorder, fork, overlap)."""

    code = "broken_attestation_chain"


class ProviderNotFoundError(NotFoundError):
    """No provider registered with that address."""

    code = "provider_not_found"


class ChainUnavailableError(MarketError):
    """The chain could not be asked whether the provider's key is bound and staked."""

    status_code = 503
    code = "chain_unavailable"


ALL_ERRORS: tuple[type[MarketError], ...] = (
    MalformedProviderMessageError,
    InvalidOfferError,
    ProviderSignatureError,
    ProviderWrongDomainError,
    ProviderKeyNotBoundError,
    ProviderStakeTooLowError,
    ProviderSuspendedError,
    MessageExpiredError,
    MessageNotYetValidError,
    ReplayedMessageError,
    BrokenAttestationChainError,
    ProviderNotFoundError,
    ChainUnavailableError,
)
"""Every error of this package (a test checks their codes against the market's)."""
