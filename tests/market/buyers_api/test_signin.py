"""The signed request format, on its own (no database)."""

from __future__ import annotations

import base64

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from market.buyers.signin import (
    MAX_LIFETIME_S,
    MESSAGE_HEADER,
    SIGNATURE_HEADER,
    TITLE,
    BuyerAction,
    BuyerRequest,
    read_request,
    sign_request,
    verify_request,
)
from market.errors import (
    MarketError,
    SignatureExpiredError,
    SignatureLifetimeError,
    SignatureMismatchError,
    SignatureRequiredError,
)
from protocol.messages import Domain

DOMAIN = Domain(chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
NOW = 1_767_225_600


def _read(headers: dict[str, str]) -> tuple[BuyerRequest, str]:
    return read_request(headers[MESSAGE_HEADER], headers[SIGNATURE_HEADER])


def _verify(request: BuyerRequest, signer: str, address: str, now: int = NOW) -> None:
    """`verify_request` of a statement request on `DOMAIN`, made on `address`'s path."""
    verify_request(
        request, signer, address=address, action=BuyerAction.STATEMENT, domain=DOMAIN, now=now
    )


def test_the_signed_text_is_canonical_and_round_trips() -> None:
    account: LocalAccount = Account.create()
    headers = sign_request(account, BuyerAction.STATEMENT, DOMAIN, NOW, nonce="n-1")
    text = base64.b64decode(headers[MESSAGE_HEADER]).decode()
    assert text == (
        "joule-market buyer request\n"
        "action: statement\n"
        f"address: {account.address}\n"
        "chain_id: 31337\n"
        "contract: 0x5FbDB2315678afecb367f032d93F642f64180aa3\n"
        "nonce: n-1\n"
        f"expires_at: {NOW + 120}"
    )
    request, signer = _read(headers)
    assert signer == account.address
    assert BuyerRequest.parse(text) == request
    _verify(request, signer, account.address)


def test_a_lowercase_path_address_is_the_same_buyer() -> None:
    account: LocalAccount = Account.create()
    request, signer = _read(sign_request(account, BuyerAction.STATEMENT, DOMAIN, NOW))
    _verify(request, signer, account.address.lower())


@pytest.mark.parametrize(
    ("now", "error"),
    [
        (NOW + 121, SignatureExpiredError),
        (NOW + 120, None),
        (NOW - MAX_LIFETIME_S + 120, None),
        (NOW - MAX_LIFETIME_S + 119, SignatureLifetimeError),
    ],
)
def test_expiry_bounds(now: int, error: type[MarketError] | None) -> None:
    account: LocalAccount = Account.create()
    request, signer = _read(sign_request(account, BuyerAction.STATEMENT, DOMAIN, NOW))
    if error is None:
        _verify(request, signer, account.address, now)
    else:
        with pytest.raises(error):
            _verify(request, signer, account.address, now)


def test_a_message_signed_by_someone_else_is_refused() -> None:
    victim: LocalAccount = Account.create()
    forger: LocalAccount = Account.create()
    honest = BuyerRequest(
        "statement", victim.address, DOMAIN.chain_id, DOMAIN.settlement_contract, "n", NOW + 60
    )
    forged = sign_request(forger, BuyerAction.STATEMENT, DOMAIN, NOW)
    message = base64.b64encode(honest.text().encode()).decode()
    request, signer = read_request(message, forged[SIGNATURE_HEADER])
    assert signer != victim.address
    with pytest.raises(SignatureMismatchError):
        _verify(request, signer, victim.address)


@pytest.mark.parametrize(
    ("message", "signature"),
    [
        (None, None),
        ("bm90IGl0", None),
        ("!!!", "0x" + "00" * 65),
        (base64.b64encode(b"hello").decode(), "0x" + "00" * 65),
        (base64.b64encode(b"\xff\xfe").decode(), "0x" + "00" * 65),
        ("bm90IGl0", "0x1234"),
        ("\u00e9\u00e9\u00e9\u00e9", "0x" + "00" * 65),  # a header that is not ASCII
    ],
)
def test_unreadable_requests_are_refused(message: str | None, signature: str | None) -> None:
    with pytest.raises(SignatureRequiredError):
        read_request(message, signature)


def test_a_malformed_signature_is_refused() -> None:
    account: LocalAccount = Account.create()
    headers = sign_request(account, BuyerAction.STATEMENT, DOMAIN, NOW)
    with pytest.raises(SignatureRequiredError):
        read_request(headers[MESSAGE_HEADER], "0x" + "ff" * 65)


C = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _text(*lines: str) -> str:
    return "\n".join([TITLE, *lines])


GOOD = ("action: a", f"address: {C}", "chain_id: 1", f"contract: {C}", "nonce: n", "expires_at: 1")


@pytest.mark.parametrize(
    "text",
    [
        _text("action: statement"),
        "other title\n" + "\n".join(GOOD),
        _text(*GOOD, "extra: 1"),
        _text(*GOOD[:1], "address: 0x12", *GOOD[2:]),
        _text(*GOOD[:2], "chain_id: -1", *GOOD[3:]),
        _text(*GOOD[:4], "nonce: a b", *GOOD[5:]),
        _text(*GOOD[:4], "nonce: " + "n" * 65, *GOOD[5:]),
        _text(GOOD[1], GOOD[0], *GOOD[2:]),
        _text(*GOOD[:5], "expires_at:1"),
        _text(*GOOD[:2], "chain_id: \u00b2", *GOOD[3:]),  # digits to str.isdigit, not to int
        _text(*GOOD[:5], "expires_at: \u00b9\u00b2"),
        _text(*GOOD[:5], "expires_at: \u0661"),  # Arabic-Indic one: int takes it
    ],
)
def test_non_canonical_texts_are_refused(text: str) -> None:
    BuyerRequest.parse(_text(*GOOD))
    with pytest.raises(SignatureRequiredError):
        BuyerRequest.parse(text)
