"""Test vectors: fixed seeds and messages -> fixed canonical bytes, digests and signatures.

`vectors.json` is committed so other implementations can check themselves; the same
figures appear in docs/protocol.md. To regenerate after a deliberate format change:
`JOULE_MARKET_WRITE_VECTORS=1 .venv/bin/pytest tests/protocol/test_protocol_vectors.py`.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey, VerifyKey

from protocol.canonical import (
    SIGNING_PREFIX,
    JsonValue,
    canonical_bytes,
    decode_canonical,
    to_hex,
)
from protocol.errors import MalformedMessageError
from protocol.messages import (
    ZERO_HASH,
    Attestation,
    Domain,
    EnergyAttribution,
    GpuReading,
    JobTicket,
    Message,
    Receipt,
    TokenCounters,
    message_digest,
    output_digest,
    request_digest,
    sign,
    signing_bytes,
)

HERE = Path(__file__).parent
VECTORS = HERE / "vectors.json"
DOCS = HERE.parents[1] / "docs" / "protocol.md"

MARKET_SEED = bytes(range(32))
PROVIDER_SEED = bytes(range(32, 64))
PROVIDER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DOMAIN = Domain(chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
REQUEST_BODY = (
    b'{"max_tokens":64,"messages":[{"content":"Hello","role":"user"}],'
    b'"model":"tiny-llama","temperature":0.7}'
)
TOKEN_IDS = [9906, 11, 1917, 0, 4294967295]
CANONICAL_EXAMPLES: list[JsonValue] = [
    {"b": [1, -2, 0, 9007199254740991], "a": None, "c": True, "A": False},
    {"s": 'é 😀 \u2028 \x7f \x1f \n \t " \\ /'},
    {"z": {"y": {}, "x": []}, "": ""},
]
NON_CANONICAL = [
    ('{"a": 1}', "whitespace"),
    ('{"b":1,"a":2}', "keys not sorted"),
    ('{"a":1,"a":1}', "duplicate key"),
    ('{"a":1.0}', "float"),
    ('{"a":1e3}', "exponent"),
    ('{"a":NaN}', "NaN"),
    ('{"a":9007199254740992}', "integer beyond 2**53 - 1"),
    ('{"a":"\\u0041"}', "needless escape"),
    ('{"a":"\\u001F"}', "uppercase hex escape"),
    ('{"\\u00e9":1}', "non-ASCII key"),
    ('{"a":1}\n', "trailing newline"),
]


def build_messages() -> dict[str, tuple[str, Message]]:
    """The fixed messages, each with the name of the key that signs it."""
    ticket = JobTicket(
        job_id="0123456789abcdef0123456789abcdef",
        provider=PROVIDER,
        request_digest=request_digest(REQUEST_BODY),
        model="tiny-llama",
        max_tokens=64,
        issued_at=1_767_225_600_000,
        expires_at=1_767_225_630_000,
        domain=DOMAIN,
    )
    receipt = Receipt(
        job_id=ticket.job_id,
        provider=PROVIDER,
        model="tiny-llama",
        model_digest=to_hex(hashlib.sha256(b"tiny-llama weights").digest()),
        prompt_tokens=12,
        completion_tokens=5,
        output_digest=output_digest(TOKEN_IDS),
        first_token_at=1_767_225_600_250,
        finished_at=1_767_225_600_400,
        energy=EnergyAttribution(
            method="estimated", millijoules=52_500, basis="TDP × utilisation, NVML absent"
        ),
        attestation_seq=0,
        ticket_digest=message_digest(ticket),
        status="complete",
        interrupted_reason=None,
        domain=DOMAIN,
    )
    interrupted = Receipt(
        job_id="fedcba9876543210fedcba9876543210",
        provider=PROVIDER,
        model="tiny-llama",
        model_digest=receipt.model_digest,
        prompt_tokens=12,
        completion_tokens=3,
        output_digest=output_digest(TOKEN_IDS[:3]),
        first_token_at=1_767_225_600_250,
        finished_at=1_767_225_600_330,
        energy=EnergyAttribution(
            method="unmeasured",
            millijoules=None,
            basis="requests overlapped; per-request share awaits window attribution",
        ),
        attestation_seq=None,
        ticket_digest=message_digest(ticket.model_copy(update={"job_id": "fedcba98" * 4})),
        status="interrupted",
        interrupted_reason="engine_died",
        domain=DOMAIN,
    )
    first = Attestation(
        provider=PROVIDER,
        seq=0,
        prev_hash=ZERO_HASH,
        window_start=1_767_225_540_000,
        window_end=1_767_225_600_000,
        gpus=(
            GpuReading(
                uuid="GPU-5c2e1b2a-1f7d-4c39-9a0e-2b9f6d1c3e44",
                name="NVIDIA H100 80GB HBM3",
                energy_mj_start=1_000_000_000,
                energy_mj_end=1_021_000_000,
                power_limit_mw=700_000,
                avg_power_mw=350_000,
            ),
        ),
        driver_version="550.54.15",
        energy_method="measured",
        energy_basis=None,
        tokens=TokenCounters(
            prompt_tokens_start=1_000,
            prompt_tokens_end=61_000,
            generation_tokens_start=2_000,
            generation_tokens_end=122_000,
        ),
        avg_running_requests_milli=12_500,
        avg_waiting_requests_milli=0,
        domain=DOMAIN,
    )
    second = first.model_copy(
        update={
            "seq": 1,
            "prev_hash": message_digest(first),
            "window_start": first.window_end,
            "window_end": first.window_end + 60_000,
            "gpus": (
                first.gpus[0].model_copy(
                    update={"energy_mj_start": 1_021_000_000, "energy_mj_end": 1_040_500_000}
                ),
            ),
            "tokens": TokenCounters(
                prompt_tokens_start=61_000,
                prompt_tokens_end=118_000,
                generation_tokens_start=122_000,
                generation_tokens_end=233_000,
            ),
        }
    )
    second = Attestation.model_validate(second.model_dump())  # model_copy skips validation
    return {
        "job_ticket": ("market", ticket),
        "receipt": ("provider", receipt),
        "receipt_interrupted": ("provider", interrupted),
        "attestation_seq0": ("provider", first),
        "attestation_seq1": ("provider", second),
    }


def build_vectors() -> dict[str, Any]:
    """Everything vectors.json holds, computed from the fixed inputs above."""
    keys = {"market": SigningKey(MARKET_SEED), "provider": SigningKey(PROVIDER_SEED)}
    messages = {}
    for name, (signer, message) in build_messages().items():
        data = signing_bytes(message)
        canonical = data.split(b"\x00", 2)[2]
        messages[name] = {
            "signer": signer,
            "type": message.type,
            "message": message.model_dump(mode="json"),
            "canonical": canonical.decode("utf-8"),
            "signing_input": to_hex(data),
            "digest": message_digest(message),
            "signature": sign(message, keys[signer]).signature,
        }
    return {
        "about": "joule-market/v1 signed-message test vectors; see docs/protocol.md",
        "signing_prefix": to_hex(SIGNING_PREFIX),
        "keys": {
            name: {"seed": to_hex(bytes(key)), "public_key": to_hex(bytes(key.verify_key))}
            for name, key in keys.items()
        },
        "messages": messages,
        "request_digest": {
            "body": REQUEST_BODY.decode("utf-8"),
            "digest": request_digest(REQUEST_BODY),
        },
        "output_digest": {"token_ids": TOKEN_IDS, "digest": output_digest(TOKEN_IDS)},
        "canonical": [canonical_bytes(value).decode("utf-8") for value in CANONICAL_EXAMPLES],
        "non_canonical": [{"json": text, "why": why} for text, why in NON_CANONICAL],
    }


def load_vectors() -> dict[str, Any]:
    """The committed vectors."""
    loaded: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return loaded


def test_vectors_match_the_code() -> None:
    built = build_vectors()
    if os.environ.get("JOULE_MARKET_WRITE_VECTORS"):
        text = json.dumps(built, indent=2) + "\n"
        VECTORS.write_text(text, encoding="utf-8")
    assert load_vectors() == built


def test_vectors_check_out_without_protocol_code() -> None:
    """Recompute every committed figure with only hashlib, json and PyNaCl."""
    vectors = load_vectors()
    prefix = bytes.fromhex(vectors["signing_prefix"][2:])
    assert prefix == b"joule-market/v1\x00"
    for name, vector in vectors["messages"].items():
        canonical = json.dumps(
            vector["message"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        assert canonical == vector["canonical"], name
        data = prefix + vector["type"].encode() + b"\x00" + canonical.encode("utf-8")
        assert to_hex(data) == vector["signing_input"], name
        assert to_hex(hashlib.sha256(data).digest()) == vector["digest"], name
        key = vectors["keys"][vector["signer"]]
        seed = bytes.fromhex(key["seed"][2:])
        assert to_hex(bytes(SigningKey(seed).verify_key)) == key["public_key"]
        signature = bytes.fromhex(vector["signature"][2:])
        VerifyKey(bytes.fromhex(key["public_key"][2:])).verify(data, signature)
    body = vectors["request_digest"]["body"].encode("utf-8")
    assert to_hex(hashlib.sha256(body).digest()) == vectors["request_digest"]["digest"]
    ids = vectors["output_digest"]["token_ids"]
    packed = b"".join(i.to_bytes(4, "little") for i in ids)
    assert to_hex(hashlib.sha256(packed).digest()) == vectors["output_digest"]["digest"]


def test_attestation_vectors_chain() -> None:
    messages = load_vectors()["messages"]
    assert (
        messages["attestation_seq1"]["message"]["prev_hash"]
        == (messages["attestation_seq0"]["digest"])
    )


def test_canonical_vectors_are_accepted() -> None:
    for text in load_vectors()["canonical"]:
        decode_canonical(text.encode("utf-8"))


@pytest.mark.parametrize(("text", "why"), NON_CANONICAL)
def test_non_canonical_vectors_are_rejected(text: str, why: str) -> None:
    with pytest.raises(MalformedMessageError):
        decode_canonical(text.encode("utf-8"))


def test_docs_reproduce_the_vectors() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    vectors = load_vectors()
    for key in vectors["keys"].values():
        assert key["seed"] in docs
        assert key["public_key"] in docs
    for name, vector in vectors["messages"].items():
        for field in ("canonical", "digest", "signature"):
            assert vector[field] in docs, f"docs/protocol.md lacks {name} {field}"
    assert vectors["output_digest"]["digest"] in docs
    assert vectors["request_digest"]["digest"] in docs
