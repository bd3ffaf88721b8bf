"""Receipts in compact columns: every signed field comes back, and the signature still holds."""

from __future__ import annotations

import secrets
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from market.energy.accounting import SiteProfile
from market.jobs.models import EnergySite, Receipt, ReceiptDomain
from market.jobs.receipt_codec import SIGNED_COLUMNS, pack, receipt_columns, unpack
from market.jobs.service import JobOrder, complete_job, get_job, open_job
from market.providers.site import site_json
from protocol.canonical import MAX_SAFE_INT
from protocol.errors import BadSignatureError, MalformedMessageError
from protocol.keys import public_key_hex, signing_key_from_seed
from protocol.messages import (
    Domain,
    EnergyAttribution,
    Signed,
    message_digest,
    sign,
    signing_bytes,
    verify,
)
from protocol.messages import Receipt as SignedReceipt
from tests.market.factories import funded_buyer, job_order, new_address

KEY = signing_key_from_seed("0x" + "42" * 32)
SIGNER = public_key_hex(KEY)
DOMAIN = Domain(chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
OTHER = Domain(chain_id=8453, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
PROVIDER = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


def _digest() -> str:
    return "0x" + secrets.token_hex(32)


def _receipt(
    *,
    model: str = "meta-llama/Llama-3.1-8B-Instruct",
    energy: EnergyAttribution | None = None,
    completion_tokens: int = 64,
    status: str = "complete",
    interrupted_reason: str | None = None,
    attestation_seq: int | None = 7,
    domain: Domain = DOMAIN,
    job_id: str | None = None,
    prompt_tokens: int = 123,
    finished_at: int = 1_767_225_600_900,
) -> Signed[SignedReceipt]:
    message = SignedReceipt(
        job_id=job_id or secrets.token_hex(16),
        provider=PROVIDER,
        model=model,
        model_digest=_digest(),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        output_digest=_digest(),
        first_token_at=None if completion_tokens == 0 else finished_at - 860,
        finished_at=finished_at,
        energy=energy or EnergyAttribution(method="measured", millijoules=180_000),
        attestation_seq=attestation_seq,
        ticket_digest=_digest(),
        status=status,
        interrupted_reason=interrupted_reason,
        domain=domain,
    )
    return sign(message, KEY)


CASES = {
    "complete, measured": _receipt(),
    "interrupted": _receipt(status="interrupted", interrupted_reason="engine_died"),
    "unmeasured": _receipt(energy=EnergyAttribution(method="unmeasured")),
    "estimated, long basis": _receipt(
        energy=EnergyAttribution(method="estimated", millijoules=1, basis="b" * 256)
    ),
    "measured with a basis": _receipt(
        energy=EnergyAttribution(method="measured", millijoules=0, basis="nvml ΔE, 2 GPUs")
    ),
    "no first token": _receipt(completion_tokens=0, attestation_seq=None),
    "unicode model": _receipt(model="模型/Llama-3.1-8B-Ünïcødé 🚀"),
    "largest integers": _receipt(
        prompt_tokens=MAX_SAFE_INT,  # 64-bit token count columns (migration 0014)
        completion_tokens=MAX_SAFE_INT,
        finished_at=MAX_SAFE_INT,
        attestation_seq=MAX_SAFE_INT,
        energy=EnergyAttribution(method="measured", millijoules=MAX_SAFE_INT),
    ),
}


def _row(envelope: Signed[SignedReceipt]) -> SimpleNamespace:
    return SimpleNamespace(**pack(envelope))


def _same(got: Signed[SignedReceipt], want: Signed[SignedReceipt]) -> None:
    assert got == want
    assert signing_bytes(got.message) == signing_bytes(want.message)
    assert message_digest(got.message) == message_digest(want.message)
    assert got.model_dump_json() == want.model_dump_json()
    assert verify(got, SIGNER, want.message.domain) == want.message


@pytest.mark.parametrize("case", list(CASES))
def test_a_packed_receipt_unpacks_to_the_same_signed_envelope(case: str) -> None:
    envelope = CASES[case]
    columns = pack(envelope)
    assert set(columns) == set(SIGNED_COLUMNS)
    assert len(columns["signature"]) == 64
    for name in ("signer", "model_digest", "output_digest", "ticket_digest"):
        assert isinstance(columns[name], bytes)
        assert len(columns[name]) == 32
    assert "domain" not in columns
    assert "status" not in columns
    _same(unpack(SimpleNamespace(**columns), envelope.message.domain), envelope)


_texts = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=256).filter(
    lambda s: len(s) <= 256
)
_uint = st.integers(min_value=0, max_value=MAX_SAFE_INT)


@st.composite
def _receipts(draw: st.DrawFn) -> Signed[SignedReceipt]:
    method = draw(st.sampled_from(["measured", "estimated", "unmeasured"]))
    basis = draw(st.none() | _texts) if method != "estimated" else draw(_texts)
    energy = EnergyAttribution(
        method=method,
        millijoules=None if method == "unmeasured" else draw(_uint),
        basis=basis,
    )
    interrupted = draw(st.booleans())
    completion = draw(st.integers(min_value=1 if interrupted else 0, max_value=MAX_SAFE_INT))
    finished = draw(st.integers(min_value=1_000, max_value=MAX_SAFE_INT))
    reason = draw(st.from_regex(r"^[a-z][a-z0-9_]{0,63}$", fullmatch=True))
    return _receipt(
        model=draw(_texts),
        energy=energy,
        completion_tokens=completion,
        status="interrupted" if interrupted else "complete",
        interrupted_reason=reason if interrupted else None,
        attestation_seq=draw(st.none() | _uint),
        domain=draw(st.sampled_from([DOMAIN, OTHER])),
        prompt_tokens=draw(_uint),
        finished_at=finished,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_receipts())
def test_any_valid_receipt_round_trips(envelope: Signed[SignedReceipt]) -> None:
    _same(unpack(_row(envelope), envelope.message.domain), envelope)


_TAMPER: dict[str, Any] = {
    "job_id": lambda v: "0" * 32 if v != "0" * 32 else "1" * 32,
    "provider_address": lambda v: new_address(),
    "model": lambda v: v + "x",
    "prompt_tokens": lambda v: v + 1,
    "completion_tokens": lambda v: v + 1,
    "first_token_at_ms": lambda v: v - 1,
    "finished_at_ms": lambda v: v + 1,
    "energy_mj": lambda v: v - 1,
    "energy_basis": lambda v: "made up",
    "attestation_seq": lambda v: v + 1,
    "model_digest": lambda v: bytes(32),
    "output_digest": lambda v: bytes([v[0] ^ 1]) + v[1:],
    "ticket_digest": lambda v: v[:-1] + bytes([v[-1] ^ 0x80]),
    "interrupted_reason": lambda v: "engine_died",
    "signature": lambda v: bytes([v[0] ^ 1]) + v[1:],
}


@pytest.mark.parametrize("column", list(_TAMPER))
def test_a_tampered_column_fails_verification(column: str) -> None:
    envelope = _receipt(completion_tokens=64)
    columns = pack(envelope)
    columns[column] = _TAMPER[column](columns[column])
    tampered = unpack(SimpleNamespace(**columns), DOMAIN)
    with pytest.raises(BadSignatureError):
        verify(tampered, SIGNER, DOMAIN)


def test_another_domain_or_signer_fails_verification() -> None:
    envelope = _receipt()
    with pytest.raises(BadSignatureError):
        verify(unpack(_row(envelope), OTHER), SIGNER, OTHER)
    columns = pack(envelope)
    columns["signer"] = bytes.fromhex(public_key_hex(signing_key_from_seed("0x" + "43" * 32))[2:])
    other = unpack(SimpleNamespace(**columns), DOMAIN)
    with pytest.raises(BadSignatureError):
        verify(other, other.signer, DOMAIN)
    columns = pack(envelope)
    columns["version"] = 2
    with pytest.raises(MalformedMessageError):
        unpack(SimpleNamespace(**columns), DOMAIN)


def _job(session: Session, job_id: str, model: str) -> JobOrder:
    order = job_order(job_id, funded_buyer(session, 10**12), PROVIDER, model)
    open_job(session, order)
    return order


SITE = site_json(
    SiteProfile(
        region="eu-west",
        tariff_micro_per_kwh=250_000,
        tariff_currency="EUR",
        pue_profile=None,
        pue_milli=1_150,
        host_overhead_milli=1_200,
    )
)


@pytest.mark.parametrize("case", list(CASES))
def test_a_stored_receipt_reads_back_as_signed(session: Session, case: str) -> None:
    """Through the database (both dialects): stored columns, raw bytes, ids of domain/site."""
    template = CASES[case].message
    job_id = secrets.token_hex(16)
    envelope = sign(template.model_copy(update={"job_id": job_id}), KEY)
    order = _job(session, job_id, envelope.message.model)
    site = None if case == "unmeasured" else SITE
    complete_job(session, job_id, envelope.message, envelope.model_dump_json(), 500, site)
    session.commit()
    session.expunge_all()
    stored = session.get(Receipt, job_id)
    assert stored is not None
    _same(stored.signed, envelope)
    assert stored.envelope == envelope.model_dump_json()
    assert stored.energy_site == site
    assert stored.status == envelope.message.status
    assert stored.receipt_hash == message_digest(envelope.message)
    read = get_job(session, order.buyer, job_id).receipt
    assert read is not None
    assert Signed[SignedReceipt].model_validate(read.envelope) == envelope
    assert read.status == envelope.message.status
    assert read.interrupted_reason == envelope.message.interrupted_reason


def test_a_tampered_row_fails_verification(session: Session) -> None:
    envelope = _receipt()
    message = envelope.message
    _job(session, message.job_id, message.model)
    complete_job(session, message.job_id, message, envelope.model_dump_json(), 0, SITE)
    session.commit()
    session.execute(
        update(Receipt)
        .where(Receipt.job_id == message.job_id)
        .values(completion_tokens=Receipt.completion_tokens + 1)
    )
    session.commit()
    session.expunge_all()
    stored = session.get(Receipt, message.job_id)
    assert stored is not None
    with pytest.raises(BadSignatureError):
        verify(stored.signed, SIGNER, DOMAIN)


def test_domains_and_sites_are_stored_once(session: Session) -> None:
    ids = []
    for n in range(4):
        envelope = _receipt(domain=DOMAIN if n % 2 else OTHER)
        message = envelope.message
        _job(session, message.job_id, message.model)
        site = SITE if n < 3 else None
        columns = receipt_columns(session, message, envelope.model_dump_json(), site)
        ids.append((columns["domain_id"], columns["energy_site_id"]))
        complete_job(session, message.job_id, message, envelope.model_dump_json(), 0, site)
        session.commit()
    assert len(session.scalars(select(ReceiptDomain)).all()) == 2
    assert [s.site for s in session.scalars(select(EnergySite))] == [SITE]
    assert ids[0][0] == ids[2][0] != ids[1][0] == ids[3][0]
    assert ids[0][1] == ids[1][1] == ids[2][1] is not None
    assert ids[3][1] is None
    stored = session.scalars(select(Receipt).order_by(Receipt.finished_at_ms)).all()
    assert len(stored) == 4
    assert {r.energy_site for r in stored} == {SITE, None}
