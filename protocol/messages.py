"""Signed messages shared by the market and the provider agent, and how to sign and check them.

Three messages, each with a type tag, a version, a domain (chain id and settlement
contract) and either an expiry or a sequence number, so that no signature can be
replayed on another chain, for another contract, or twice:

- `JobTicket` (market key): lets one provider serve one request until `expires_at`;
- `Receipt` (provider key): what was served for a ticket, bound to it by digest;
  replay is stopped by the ticket's job id, which the market accepts once;
- `Attestation` (provider key): counters over a window, hash-chained by `seq`/`prev_hash`.

A message travels inside `Signed`, next to the signer's Ed25519 public key and a
signature over `signing_bytes(message)` (see `protocol.canonical`). Models are frozen,
reject unknown fields, and take integers strictly (no floats, no booleans).
"""

import struct
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import Annotated, Any, Generic, Literal, Self, TypeAlias, TypeVar, cast

import nacl.exceptions
from eth_utils.address import is_hex_address, to_checksum_address
from nacl.signing import SigningKey, VerifyKey
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from protocol.canonical import (
    MAX_SAFE_INT,
    from_hex,
    sha256_hex,
    signing_input,
    to_hex,
)
from protocol.errors import (
    BadSignatureError,
    BrokenChainError,
    ExpiredMessageError,
    MalformedMessageError,
    NotYetValidError,
    ReceiptMismatchError,
    WrongDomainError,
    WrongSignerError,
)

ZERO_HASH = "0x" + "00" * 32
DEFAULT_MAX_CLOCK_SKEW_MS = 5_000


@lru_cache(maxsize=4096)
def _checksum_of(value: str) -> str | None:
    return to_checksum_address(value) if is_hex_address(value) else None


def _checksummed(value: str) -> str:
    expected = _checksum_of(value)
    if expected is None:
        raise ValueError("expected a 0x-prefixed 20-byte hex address")
    if value != expected:
        raise ValueError(f"address must be EIP-55 checksummed: {expected}")
    return value


def _exact_int(value: object) -> object:
    if type(value) is not int:
        raise ValueError("version must be the integer 1")
    return value


UInt = Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INT)]
PositiveInt = Annotated[StrictInt, Field(ge=1, le=MAX_SAFE_INT)]
UnixMs = UInt
Hash32 = Annotated[StrictStr, Field(pattern=r"^0x[0-9a-f]{64}$")]
PublicKeyHex = Annotated[StrictStr, Field(pattern=r"^0x[0-9a-f]{64}$")]
SignatureHex = Annotated[StrictStr, Field(pattern=r"^0x[0-9a-f]{128}$")]
Address = Annotated[StrictStr, AfterValidator(_checksummed)]
JobId = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{32}$")]
Text = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Version = Annotated[Literal[1], BeforeValidator(_exact_int)]
EnergyMethod = Literal["measured", "estimated", "unmeasured"]
ReceiptStatus = Literal["complete", "interrupted"]
ReasonCode = Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Domain(_Model):
    """Where a signature is valid: one chain and one Settlement contract on it."""

    chain_id: PositiveInt
    settlement_contract: Address


class JobTicket(_Model):
    """The market's permission for `provider` to serve one request, signed by the market."""

    type: Literal["job_ticket"] = "job_ticket"
    version: Version = 1
    job_id: JobId
    provider: Address
    request_digest: Hash32
    model: Text
    max_tokens: PositiveInt
    issued_at: UnixMs
    expires_at: UnixMs
    domain: Domain

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class EnergyAttribution(_Model):
    """Energy charged to one request and how it was obtained; never a made-up number."""

    method: EnergyMethod
    millijoules: UInt | None = None
    basis: Text | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.method == "unmeasured" and self.millijoules is not None:
            raise ValueError("unmeasured energy must have millijoules null")
        if self.method != "unmeasured" and self.millijoules is None:
            raise ValueError(f"{self.method} energy needs millijoules")
        if self.method == "estimated" and self.basis is None:
            raise ValueError("estimated energy needs a basis saying how it was estimated")
        return self


class Receipt(_Model):
    """What the provider served for one ticket, signed by the provider.

    `status` is "complete" when the engine finished the answer, "interrupted" when the
    stream broke off after some tokens were delivered; then `interrupted_reason` says why
    (a short snake_case code such as "engine_died") and `completion_tokens` and
    `output_digest` cover exactly the tokens delivered. Both fields are always present in
    the signed bytes (no default): `interrupted_reason` is null exactly when complete.
    """

    type: Literal["receipt"] = "receipt"
    version: Version = 1
    job_id: JobId
    provider: Address
    model: Text
    model_digest: Hash32
    prompt_tokens: UInt
    completion_tokens: UInt
    output_digest: Hash32
    first_token_at: UnixMs | None
    finished_at: UnixMs
    energy: EnergyAttribution
    attestation_seq: UInt | None
    ticket_digest: Hash32
    status: ReceiptStatus
    interrupted_reason: ReasonCode | None
    domain: Domain

    @model_validator(mode="after")
    def _timing(self) -> Self:
        if self.status == "interrupted" and self.interrupted_reason is None:
            raise ValueError("an interrupted receipt needs interrupted_reason")
        if self.status == "complete" and self.interrupted_reason is not None:
            raise ValueError("a complete receipt must have interrupted_reason null")
        if self.status == "interrupted" and self.completion_tokens == 0:
            raise ValueError("an interrupted receipt covers at least one delivered token")
        if (self.first_token_at is None) != (self.completion_tokens == 0):
            raise ValueError("first_token_at is null exactly when completion_tokens is 0")
        if self.first_token_at is not None and self.finished_at < self.first_token_at:
            raise ValueError("finished_at must not be before first_token_at")
        return self


class GpuReading(_Model):
    """One GPU's identity and counters over an attestation window (null: not measured)."""

    uuid: Text
    name: Text
    energy_mj_start: UInt | None
    energy_mj_end: UInt | None
    power_limit_mw: UInt | None
    avg_power_mw: UInt | None

    @model_validator(mode="after")
    def _counter(self) -> Self:
        start, end = self.energy_mj_start, self.energy_mj_end
        if (start is None) != (end is None):
            raise ValueError("energy_mj_start and energy_mj_end are both set or both null")
        if start is not None and end is not None and end < start:
            raise ValueError("energy counter went backwards; end the window at a reset")
        return self


class TokenCounters(_Model):
    """vLLM's cumulative token counters at both ends of an attestation window."""

    prompt_tokens_start: UInt
    prompt_tokens_end: UInt
    generation_tokens_start: UInt
    generation_tokens_end: UInt

    @model_validator(mode="after")
    def _monotonic(self) -> Self:
        if self.prompt_tokens_end < self.prompt_tokens_start:
            raise ValueError("prompt token counter went backwards")
        if self.generation_tokens_end < self.generation_tokens_start:
            raise ValueError("generation token counter went backwards")
        return self


class Attestation(_Model):
    """A provider's counters over one window; `prev_hash` = `message_digest(previous)`."""

    type: Literal["attestation"] = "attestation"
    version: Version = 1
    provider: Address
    seq: UInt
    prev_hash: Hash32
    window_start: UnixMs
    window_end: UnixMs
    gpus: tuple[GpuReading, ...] = Field(max_length=64)
    driver_version: Text | None
    energy_method: EnergyMethod
    energy_basis: Text | None
    tokens: TokenCounters
    avg_running_requests_milli: UInt
    avg_waiting_requests_milli: UInt
    domain: Domain

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if (self.seq == 0) != (self.prev_hash == ZERO_HASH):
            raise ValueError("prev_hash is all zeros exactly when seq is 0")
        if len({gpu.uuid for gpu in self.gpus}) != len(self.gpus):
            raise ValueError("GPU uuids must be unique")
        measured = [gpu.energy_mj_start is not None for gpu in self.gpus]
        if self.energy_method == "unmeasured" and any(measured):
            raise ValueError("unmeasured attestation must have null GPU energy counters")
        if self.energy_method != "unmeasured" and not (measured and all(measured)):
            raise ValueError(f"{self.energy_method} attestation needs every GPU's energy")
        if self.energy_method == "estimated" and self.energy_basis is None:
            raise ValueError("estimated energy needs energy_basis")
        return self

    @property
    def energy_mj(self) -> int | None:
        """The window's energy over all its GPUs (every counter is set unless unmeasured)."""
        if self.energy_method == "unmeasured":
            return None
        return sum((gpu.energy_mj_end or 0) - (gpu.energy_mj_start or 0) for gpu in self.gpus)


Message: TypeAlias = JobTicket | Receipt | Attestation
M = TypeVar("M", bound=JobTicket | Receipt | Attestation)


class Signed(_Model, Generic[M]):
    """A message with the signer's Ed25519 public key and signature over its signing bytes."""

    message: M
    signer: PublicKeyHex
    signature: SignatureHex


_ENVELOPES: dict[type[Any], type[Any]] = {
    JobTicket: Signed[JobTicket],
    Receipt: Signed[Receipt],
    Attestation: Signed[Attestation],
}


def signing_bytes(message: Message) -> bytes:
    """The exact bytes a signature covers (prefix, type tag, canonical JSON of the message)."""
    return signing_input(message.type, message.model_dump(mode="json"))


def message_digest(message: Message) -> str:
    """SHA-256 of the signing bytes: ticket_digest in receipts, prev_hash in attestations."""
    return sha256_hex(signing_bytes(message))


def sign(message: M, signing_key: SigningKey) -> Signed[M]:
    """Sign `message` with an Ed25519 key and wrap it in an envelope."""
    signature = signing_key.sign(signing_bytes(message)).signature
    return Signed(
        message=message,
        signer=to_hex(bytes(signing_key.verify_key)),
        signature=to_hex(signature),
    )


def verify(envelope: Signed[M], expected_signer: str, domain: Domain) -> M:
    """Return the message if `expected_signer` signed it for `domain`; raise otherwise.

    `expected_signer` is the public key as 0x-prefixed lowercase hex; the envelope's own
    `signer` field only helps look the key up and is never trusted on its own.
    """
    if envelope.signer != expected_signer:
        raise WrongSignerError(f"signed by {envelope.signer}, expected {expected_signer}")
    message = envelope.message
    try:
        VerifyKey(from_hex(envelope.signer, 32)).verify(
            signing_bytes(message), from_hex(envelope.signature, 64)
        )
    except nacl.exceptions.CryptoError as exc:
        raise BadSignatureError(f"{message.type} signature does not verify") from exc
    if message.domain != domain:
        raise WrongDomainError(f"{message.type} is for {message.domain}, expected {domain}")
    return message


def parse_signed(data: str | bytes, kind: type[M]) -> Signed[M]:
    """Parse an envelope from JSON, turning validation errors into `MalformedMessageError`."""
    envelope_type = _ENVELOPES[kind]
    try:
        return cast("Signed[M]", envelope_type.model_validate_json(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '$'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise MalformedMessageError(f"malformed {kind.__name__} envelope: {problems}") from exc


def check_ticket_fresh(
    ticket: JobTicket, now_ms: int, *, max_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
) -> None:
    """Raise unless `now_ms` lies in the ticket's window (issue time may lead by the skew)."""
    if now_ms >= ticket.expires_at:
        raise ExpiredMessageError(
            f"ticket {ticket.job_id} expired at {ticket.expires_at}, now {now_ms}"
        )
    if ticket.issued_at > now_ms + max_skew_ms:
        raise NotYetValidError(f"ticket {ticket.job_id} issued at {ticket.issued_at}, now {now_ms}")


def check_receipt_matches_ticket(
    receipt: Receipt, ticket: JobTicket, ticket_digest: str | None = None
) -> None:
    """Raise `ReceiptMismatchError` unless the receipt answers exactly this ticket.

    `ticket_digest`: the ticket's `message_digest`, if the caller already has it."""
    pairs = (
        ("job_id", receipt.job_id, ticket.job_id),
        ("provider", receipt.provider, ticket.provider),
        ("model", receipt.model, ticket.model),
        ("domain", receipt.domain, ticket.domain),
        ("ticket_digest", receipt.ticket_digest, ticket_digest or message_digest(ticket)),
    )
    for name, got, want in pairs:
        if got != want:
            raise ReceiptMismatchError(f"receipt {name} {got} does not match ticket {want}")
    if receipt.completion_tokens > ticket.max_tokens:
        raise ReceiptMismatchError(
            f"receipt has {receipt.completion_tokens} tokens, ticket allows {ticket.max_tokens}"
        )


def check_chain(previous: Attestation | None, current: Attestation) -> None:
    """Raise `BrokenChainError` unless `current` directly follows `previous` (None: first)."""
    if previous is None:
        if current.seq != 0:
            raise BrokenChainError(f"first attestation has seq {current.seq}, expected 0")
        return
    if current.provider != previous.provider or current.domain != previous.domain:
        raise BrokenChainError("attestation changes provider or domain")
    if current.seq != previous.seq + 1:
        raise BrokenChainError(f"seq {current.seq} does not follow {previous.seq}")
    if current.prev_hash != message_digest(previous):
        raise BrokenChainError(f"prev_hash of seq {current.seq} does not match seq {previous.seq}")
    if current.window_start < previous.window_end:
        raise BrokenChainError(f"window of seq {current.seq} overlaps seq {previous.seq}")


def output_digest(token_ids: Sequence[int]) -> str:
    """SHA-256 over the output token ids, each a little-endian uint32, concatenated."""
    try:
        packed = struct.pack(f"<{len(token_ids)}I", *token_ids)
    except struct.error as exc:
        raise MalformedMessageError("token ids must be uint32 (0..2**32 - 1)") from exc
    return sha256_hex(packed)


def request_digest(body: bytes) -> str:
    """SHA-256 of the exact request body bytes the market forwards to the provider."""
    return sha256_hex(body)


def new_job_id() -> str:
    """A fresh random job id (uuid4 as 32 lowercase hex digits)."""
    return uuid.uuid4().hex
