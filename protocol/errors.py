"""Exceptions raised by the signed-message layer, all under one root.

Callers at a boundary (the market's API, the agent's job endpoint) catch
`ProtocolError` and map `code` to their own error bodies; the codes are stable
strings so that both sides and other implementations can rely on them.
"""

from typing import ClassVar


class ProtocolError(Exception):
    """Root of every error raised by `protocol`."""

    code: ClassVar[str] = "protocol_error"


class MalformedMessageError(ProtocolError):
    """The input does not parse, fails validation, or cannot be encoded canonically."""

    code = "malformed_message"


class BadSignatureError(ProtocolError):
    """The signature does not verify over the message's signing input."""

    code = "bad_signature"


class WrongSignerError(BadSignatureError):
    """The envelope is signed by a key other than the one the verifier expects."""

    code = "wrong_signer"


class WrongDomainError(ProtocolError):
    """The message names another chain or settlement contract than the verifier's."""

    code = "wrong_domain"


class ExpiredMessageError(ProtocolError):
    """The message's validity window has passed."""

    code = "expired_message"


class NotYetValidError(ProtocolError):
    """The message claims to be issued later than the verifier's clock allows."""

    code = "not_yet_valid"


class ReceiptMismatchError(ProtocolError):
    """A receipt does not belong to the ticket it claims (job, provider, model, digest)."""

    code = "receipt_mismatch"


class BrokenChainError(ProtocolError):
    """An attestation does not follow its predecessor (gap, reorder, fork, overlap)."""

    code = "broken_chain"


class KeystoreError(ProtocolError):
    """A keystore cannot be created or opened (exists, wrong passphrase, corrupted)."""

    code = "keystore_error"
