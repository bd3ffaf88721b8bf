"""Signed buyer requests: how a buyer proves it controls its address, without a password.

Account management (API keys) and statements are authorised by an EIP-191 `personal_sign`
signature of a short canonical text, sent base64-encoded in `X-Buyer-Message` with the
signature (0x and 65 bytes in hex) in `X-Buyer-Signature`:

    joule-market buyer request
    action: create_api_key
    address: 0x8ba1f109551bD432803012645Ac136ddd64DBA72
    chain_id: 31337
    contract: 0x5FbDB2315678afecb367f032d93F642f64180aa3
    nonce: 3f0c9a0e8e9b4d5f9a1c2b3d4e5f6a7b
    expires_at: 1767225600

The domain (chain id and Settlement contract, `GET /market`) keeps a signature for one market
from being used at another; the action keeps one route's signature from being used on
another; the nonce, remembered until the expiry, keeps it from being used twice; and the
expiry, at most `MAX_LIFETIME_S` ahead, bounds how long the market must remember nonces.

This module has no database: `sign_request` is the client's half (tests, the e2e test and
the docs use it) and `verify_request` the market's stateless half; the nonce is consumed by
`market.buyers.nonces.consume_nonce` in the request's transaction.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from market.addresses import checksum_address
from market.errors import (
    InvalidAddressError,
    SignatureExpiredError,
    SignatureLifetimeError,
    SignatureMismatchError,
    SignatureRequiredError,
)
from protocol.messages import Domain

MESSAGE_HEADER = "X-Buyer-Message"
SIGNATURE_HEADER = "X-Buyer-Signature"
TITLE = "joule-market buyer request"
"""The first line of every signed buyer request, so a wallet shows what is being signed."""

MAX_LIFETIME_S = 600
"""The latest expiry the market accepts, in seconds from now."""

DEFAULT_LIFETIME_S = 120
"""The expiry `sign_request` uses unless told otherwise."""

_FIELDS = ("action", "address", "chain_id", "contract", "nonce", "expires_at")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DECIMAL = re.compile(r"^[0-9]{1,20}$")
"""ASCII digits: `str.isdigit` also takes "²", which `int` refuses."""
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_MAX_MESSAGE_BYTES = 1024


class BuyerAction(StrEnum):
    """What a signed request is allowed to do; each route accepts exactly one."""

    CREATE_API_KEY = "create_api_key"
    LIST_API_KEYS = "list_api_keys"
    REVOKE_API_KEY = "revoke_api_key"
    UPDATE_API_KEY = "update_api_key"
    STATEMENT = "statement"


@dataclass(frozen=True)
class BuyerRequest:
    """The fields of a signed buyer request."""

    action: str
    address: str
    chain_id: int
    contract: str
    nonce: str
    expires_at: int

    def text(self) -> str:
        """The canonical text that is signed: the title, then one `field: value` per line."""
        values = (
            self.action,
            self.address,
            self.chain_id,
            self.contract,
            self.nonce,
            self.expires_at,
        )
        lines = [TITLE, *(f"{name}: {value}" for name, value in zip(_FIELDS, values, strict=True))]
        return "\n".join(lines)

    @classmethod
    def parse(cls, text: str) -> BuyerRequest:
        """Reads the canonical text; `SignatureRequiredError` if it is not one."""
        lines = text.split("\n")
        if len(lines) != len(_FIELDS) + 1 or lines[0] != TITLE:
            raise SignatureRequiredError(f"a signed buyer request has the title and {_FIELDS}")
        values: list[str] = []
        for name, line in zip(_FIELDS, lines[1:], strict=True):
            key, sep, value = line.partition(": ")
            if key != name or not sep or not value:
                raise SignatureRequiredError(f"expected the line `{name}: ...`, got {line!r}")
            values.append(value)
        action, address, chain_id, contract, nonce, expires_at = values
        if not _DECIMAL.match(chain_id) or not _DECIMAL.match(expires_at):
            raise SignatureRequiredError("chain_id and expires_at are decimal integers")
        if not _NONCE.match(nonce):
            raise SignatureRequiredError("a nonce is 1 to 64 characters of [A-Za-z0-9_-]")
        try:
            address, contract = checksum_address(address), checksum_address(contract)
        except InvalidAddressError as exc:
            raise SignatureRequiredError(exc.message) from exc
        return cls(action, address, int(chain_id), contract, nonce, int(expires_at))


def sign_request(
    account: LocalAccount,
    action: BuyerAction | str,
    domain: Domain,
    now: int | None = None,
    *,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that authorise one request of `account` to `action` at the market of `domain`.

    `now` is Unix seconds (default: the clock); each call takes a fresh random nonce unless
    one is given, so every request needs its own headers.
    """
    request = BuyerRequest(
        action=str(action),
        address=account.address,
        chain_id=domain.chain_id,
        contract=domain.settlement_contract,
        nonce=nonce or secrets.token_hex(16),
        expires_at=(int(time.time()) if now is None else now) + lifetime_s,
    )
    text = request.text()
    signed = account.sign_message(encode_defunct(text=text))
    return {
        MESSAGE_HEADER: base64.b64encode(text.encode("utf-8")).decode("ascii"),
        SIGNATURE_HEADER: "0x" + bytes(signed.signature).hex(),
    }


def read_request(message_b64: str | None, signature: str | None) -> tuple[BuyerRequest, str]:
    """The request in the headers and the address that signed it (not yet checked)."""
    if not message_b64 or not signature:
        raise SignatureRequiredError(
            f"sign the request: send `{MESSAGE_HEADER}` and `{SIGNATURE_HEADER}` "
            "(or, where accepted, `Authorization: Bearer <key>`)"
        )
    if len(message_b64) > _MAX_MESSAGE_BYTES * 2 or not _SIGNATURE.match(signature):
        raise SignatureRequiredError(f"{SIGNATURE_HEADER} is 0x and 65 bytes in hex")
    try:
        text = base64.b64decode(message_b64, validate=True).decode("utf-8")
    except ValueError as exc:  # binascii.Error, UnicodeDecodeError, non-ASCII header text
        raise SignatureRequiredError(f"{MESSAGE_HEADER} is not base64 of UTF-8 text") from exc
    request = BuyerRequest.parse(text)
    try:
        signer = Account.recover_message(
            encode_defunct(text=text), signature=bytes.fromhex(signature[2:])
        )
    except Exception as exc:  # eth-keys raises several kinds for a malformed signature
        raise SignatureRequiredError(f"{SIGNATURE_HEADER} is not a valid signature") from exc
    return request, str(signer)


def verify_request(
    request: BuyerRequest,
    signer: str,
    *,
    address: str,
    action: BuyerAction,
    domain: Domain,
    now: int,
) -> None:
    """Checks everything but the nonce: signer, address, domain, action and expiry.

    `address` is the buyer the route is about; `now` is Unix seconds.
    """
    address = checksum_address(address)
    if signer != request.address:
        raise SignatureMismatchError(f"signed by {signer}, not by {request.address}")
    if request.address != address:
        raise SignatureMismatchError(f"the request is signed for {request.address}, not {address}")
    if (request.chain_id, request.contract) != (domain.chain_id, domain.settlement_contract):
        raise SignatureMismatchError(
            f"signed for chain {request.chain_id} contract {request.contract}; this market is "
            f"chain {domain.chain_id} contract {domain.settlement_contract} (GET /market)"
        )
    if request.action != action:
        raise SignatureMismatchError(f"signed for action {request.action!r}, not {action.value!r}")
    if request.expires_at < now:
        raise SignatureExpiredError(f"the signed request expired at {request.expires_at}")
    if request.expires_at - now > MAX_LIFETIME_S:
        raise SignatureLifetimeError(
            f"expires_at is at most {MAX_LIFETIME_S} s ahead (now is {now})"
        )
