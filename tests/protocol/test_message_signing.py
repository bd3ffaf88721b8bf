"""Signing and verifying envelopes: round trips, tampering, signers, domains, expiry, tickets."""

import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from protocol.errors import (
    BadSignatureError,
    ExpiredMessageError,
    MalformedMessageError,
    NotYetValidError,
    ReceiptMismatchError,
    WrongDomainError,
    WrongSignerError,
)
from protocol.keys import public_key_hex
from protocol.messages import (
    Attestation,
    Domain,
    JobTicket,
    Message,
    Receipt,
    Signed,
    check_receipt_matches_ticket,
    check_ticket_fresh,
    parse_signed,
    sign,
    signing_bytes,
    verify,
)

VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text(encoding="utf-8"))
KEYS = {name: SigningKey(bytes.fromhex(key["seed"][2:])) for name, key in VECTORS["keys"].items()}
KINDS: dict[str, type[JobTicket] | type[Receipt] | type[Attestation]] = {
    "job_ticket": JobTicket,
    "receipt": Receipt,
    "receipt_interrupted": Receipt,
    "attestation_seq0": Attestation,
    "attestation_seq1": Attestation,
}
DOMAIN = Domain.model_validate(VECTORS["messages"]["job_ticket"]["message"]["domain"])
OTHER_ADDRESS = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
TICKET = JobTicket.model_validate(VECTORS["messages"]["job_ticket"]["message"])
RECEIPT = Receipt.model_validate(VECTORS["messages"]["receipt"]["message"])


def message(name: str) -> Message:
    """A valid message from the committed vectors."""
    return KINDS[name].model_validate(VECTORS["messages"][name]["message"])


def signed_json(name: str) -> dict[str, Any]:
    """The vector's envelope as a JSON object, signed by its vector key."""
    vector = VECTORS["messages"][name]
    envelope = sign(message(name), KEYS[vector["signer"]])
    data: dict[str, Any] = json.loads(envelope.model_dump_json())
    return data


def check(name: str, envelope: dict[str, Any] | str) -> Message:
    """Parse and verify as the receiving side would, against the vector's key and domain."""
    text = envelope if isinstance(envelope, str) else json.dumps(envelope)
    expected = public_key_hex(KEYS[VECTORS["messages"][name]["signer"]])
    return verify(parse_signed(text, KINDS[name]), expected, DOMAIN)


@pytest.mark.parametrize("name", list(KINDS))
def test_signed_envelopes_round_trip(name: str) -> None:
    original = message(name)
    envelope = sign(original, KEYS[VECTORS["messages"][name]["signer"]])
    assert envelope.signature == VECTORS["messages"][name]["signature"]
    assert check(name, envelope.model_dump_json()) == original


def _leaves(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, (*path, key))]
    if isinstance(value, list):
        return [leaf for index, item in enumerate(value) for leaf in _leaves(item, (*path, index))]
    return [path]


def _tampered(value: Any) -> Any:
    """A different value of the same shape (still valid where the field allows it)."""
    if isinstance(value, bool) or value is None:
        return "x" if value is None else not value
    if isinstance(value, int):
        return value + 1
    if value in ("measured", "estimated", "unmeasured"):
        return {"measured": "unmeasured", "estimated": "measured", "unmeasured": "measured"}[value]
    if len(value) == 42 and value.startswith("0x"):
        return OTHER_ADDRESS
    if value.startswith("0x") or len(value) == 32:
        return value[:-1] + ("1" if value[-1] != "1" else "2")
    return value + "x"


# Fields whose tampered value no longer validates: the parser refuses them before the
# signature is even checked. Every other field must fail the signature check.
REFUSED_BY_PARSER = {
    ("job_ticket", ("type",)),
    ("job_ticket", ("version",)),
    ("receipt", ("type",)),
    ("receipt", ("version",)),
    ("receipt", ("status",)),
    ("receipt", ("interrupted_reason",)),
    ("receipt_interrupted", ("type",)),
    ("receipt_interrupted", ("version",)),
    ("receipt_interrupted", ("status",)),
    ("receipt_interrupted", ("energy", "method")),
    ("receipt_interrupted", ("energy", "millijoules")),
    ("receipt_interrupted", ("attestation_seq",)),
    ("attestation_seq0", ("type",)),
    ("attestation_seq0", ("version",)),
    ("attestation_seq0", ("seq",)),
    ("attestation_seq0", ("prev_hash",)),
    ("attestation_seq0", ("energy_method",)),
    ("attestation_seq1", ("type",)),
    ("attestation_seq1", ("version",)),
    ("attestation_seq1", ("energy_method",)),
}
TAMPER_CASES = [
    (name, path) for name in KINDS for path in _leaves(VECTORS["messages"][name]["message"])
]


@pytest.mark.parametrize(("name", "path"), TAMPER_CASES)
def test_tampering_any_field_is_caught(name: str, path: tuple[str | int, ...]) -> None:
    envelope = signed_json(name)
    target = envelope["message"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = _tampered(target[path[-1]])
    expected = MalformedMessageError if (name, path) in REFUSED_BY_PARSER else BadSignatureError
    with pytest.raises(expected):
        check(name, envelope)


@pytest.mark.parametrize("name", list(KINDS))
def test_every_field_is_covered_by_the_tamper_test(name: str) -> None:
    covered = {path[0] for case, path in TAMPER_CASES if case == name}
    assert covered == set(KINDS[name].model_fields)


def test_flipped_signature_bit_is_caught() -> None:
    envelope = signed_json("receipt")
    signature = bytearray.fromhex(envelope["signature"][2:])
    signature[10] ^= 0x01
    envelope["signature"] = "0x" + signature.hex()
    with pytest.raises(BadSignatureError, match="receipt signature does not verify"):
        check("receipt", envelope)


def test_signature_of_another_message_is_caught() -> None:
    envelope = signed_json("attestation_seq1")
    envelope["signature"] = signed_json("attestation_seq0")["signature"]
    with pytest.raises(BadSignatureError):
        check("attestation_seq1", envelope)


def test_other_signer_is_refused_even_with_a_valid_signature() -> None:
    forged = sign(RECEIPT, SigningKey.generate())
    with pytest.raises(WrongSignerError, match="expected"):
        verify(forged, public_key_hex(KEYS["provider"]), DOMAIN)
    assert issubclass(WrongSignerError, BadSignatureError)


def test_signer_field_swapped_to_the_expected_key_is_caught() -> None:
    forged = json.loads(sign(RECEIPT, SigningKey.generate()).model_dump_json())
    forged["signer"] = public_key_hex(KEYS["provider"])
    with pytest.raises(BadSignatureError):
        check("receipt", forged)


def test_market_key_cannot_stand_in_for_provider_key() -> None:
    envelope = sign(RECEIPT, KEYS["market"])
    with pytest.raises(WrongSignerError):
        verify(envelope, public_key_hex(KEYS["provider"]), DOMAIN)


@pytest.mark.parametrize(
    "other",
    [
        Domain(chain_id=1, settlement_contract=DOMAIN.settlement_contract),
        Domain(chain_id=DOMAIN.chain_id, settlement_contract=OTHER_ADDRESS),
    ],
)
def test_wrong_domain_is_refused(other: Domain) -> None:
    envelope = sign(TICKET, KEYS["market"])
    with pytest.raises(WrongDomainError, match="expected"):
        verify(envelope, public_key_hex(KEYS["market"]), other)
    replayed = sign(TICKET.model_copy(update={"domain": other}), KEYS["market"])
    with pytest.raises(WrongDomainError):
        verify(replayed, public_key_hex(KEYS["market"]), DOMAIN)


def test_type_tag_separates_message_kinds() -> None:
    assert signing_bytes(TICKET).startswith(b"joule-market/v1\x00job_ticket\x00{")
    assert signing_bytes(RECEIPT).startswith(b"joule-market/v1\x00receipt\x00{")
    with pytest.raises(MalformedMessageError):
        parse_signed(json.dumps(signed_json("job_ticket")), Receipt)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.update(signature=e["signature"].upper().replace("0X", "0x")),
        lambda e: e.update(signer=e["signer"][:-2]),
        lambda e: e.update(extra=1),
        lambda e: e.pop("signature"),
        lambda e: e["message"].update(max_tokens=64.0),
        lambda e: e["message"].update(max_tokens="64"),
        lambda e: e["message"].update(version=True),
    ],
)
def test_malformed_envelopes_are_refused(mutate: Any) -> None:
    envelope = signed_json("job_ticket")
    mutate(envelope)
    with pytest.raises(MalformedMessageError):
        check("job_ticket", envelope)


@pytest.mark.parametrize("data", ["", "not json", "[]", '{"message": 1}', b"\xff"])
def test_unparseable_input_is_malformed(data: str | bytes) -> None:
    with pytest.raises(MalformedMessageError):
        parse_signed(data, JobTicket)


def test_envelope_type_is_generic() -> None:
    envelope: Signed[JobTicket] = parse_signed(json.dumps(signed_json("job_ticket")), JobTicket)
    assert envelope.message.max_tokens == 64


def test_ticket_freshness_window() -> None:
    check_ticket_fresh(TICKET, TICKET.issued_at)
    check_ticket_fresh(TICKET, TICKET.expires_at - 1)
    check_ticket_fresh(TICKET, TICKET.issued_at - 5_000)
    with pytest.raises(ExpiredMessageError, match="expired"):
        check_ticket_fresh(TICKET, TICKET.expires_at)
    with pytest.raises(NotYetValidError):
        check_ticket_fresh(TICKET, TICKET.issued_at - 5_001)
    check_ticket_fresh(TICKET, TICKET.issued_at - 60_000, max_skew_ms=60_000)


def test_receipt_matches_its_ticket() -> None:
    check_receipt_matches_ticket(RECEIPT, TICKET)
    check_receipt_matches_ticket(
        RECEIPT.model_copy(update={"completion_tokens": TICKET.max_tokens}), TICKET
    )


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"job_id": "f" * 32}, "job_id"),
        ({"provider": OTHER_ADDRESS}, "provider"),
        ({"model": "other-model"}, "model"),
        ({"domain": Domain(chain_id=1, settlement_contract=OTHER_ADDRESS)}, "domain"),
        ({"ticket_digest": "0x" + "11" * 32}, "ticket_digest"),
        ({"completion_tokens": 65}, "ticket allows 64"),
    ],
)
def test_receipt_for_another_ticket_is_refused(update: dict[str, Any], field: str) -> None:
    with pytest.raises(ReceiptMismatchError, match=field):
        check_receipt_matches_ticket(RECEIPT.model_copy(update=update), TICKET)


def test_receipt_for_a_modified_ticket_is_refused() -> None:
    longer = TICKET.model_copy(update={"max_tokens": 4096})
    with pytest.raises(ReceiptMismatchError, match="ticket_digest"):
        check_receipt_matches_ticket(RECEIPT, longer)
