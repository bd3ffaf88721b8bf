"""Attestations whose checks fail hold the provider's payment, through the real app."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from market.db import session_scope
from market.energy.plausibility import CheckResult
from market.reviews.models import PaymentReview, PaymentReviewReason, ReviewStatus
from market.reviews.service import DEFAULT_HOLD_KINDS, get_review, hold_for_attestation
from market.runtime import Runtime
from protocol.keys import ProviderIdentity
from tests.market.providers.factories import ChainProviders, attestation, now_ms


def _register(client: TestClient, providers: ChainProviders) -> ProviderIdentity:
    identity = providers.new()
    response = client.post("/providers/register", json=providers.registration(identity))
    assert response.status_code == 200, response.text
    return identity


def _attest(
    client: TestClient, runtime: Runtime, identity: ProviderIdentity, **figures: Any
) -> None:
    envelope = attestation(
        identity, runtime.chain.domain, 0, None, window_start=now_ms() - 120_000, **figures
    )
    response = client.post(
        "/providers/attestations",
        content=envelope.model_dump_json(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text


def test_power_above_the_gpu_limit_opens_a_review(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _register(client, providers)
    before = client.get(f"/providers/{identity.address}").json()
    assert before["payment_held"] is False
    # 60,000 J in 60 s on one H100 is 1,000 W: above its 700 W limit.
    _attest(client, runtime, identity, energy_mj=60_000_000, avg_power_mw=1_000_000)
    view = client.get(f"/providers/{identity.address}").json()
    assert view["payment_held"] is True
    with session_scope(runtime.sessions) as session:
        review = session.scalars(select(PaymentReview)).one()
        assert (review.provider_address, review.status) == (identity.address, ReviewStatus.OPEN)
        detail = get_review(session, review.id)
    checks = {(r.check, r.kind) for r in detail.reasons}
    assert ("power_range", "physics") in checks
    assert all(r.source == "attestation" and r.attestation_seq == 0 for r in detail.reasons)
    assert all(r.kind != "data" for r in detail.reasons)
    assert [p["payment_held"] for p in client.get("/providers").json()] == [True]


def test_data_only_failures_do_not_hold(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _register(client, providers)
    results = [
        CheckResult("jpt_band", False, "data", "0.9 J/token above the measured band"),
        CheckResult("throughput_band", None, "data", "skipped"),
        CheckResult("power_range", True, "physics", "within the limit"),
        CheckResult("chain_link", True, "hygiene", "first attestation has seq 0"),
    ]
    with session_scope(runtime.sessions) as session:
        assert (
            hold_for_attestation(session, identity.address, 3, results, DEFAULT_HOLD_KINDS) is None
        )
        assert session.scalars(select(PaymentReview)).all() == []
        # Configured to hold on data too, the same results open a review.
        review = hold_for_attestation(
            session, identity.address, 3, results, DEFAULT_HOLD_KINDS | {"data"}
        )
        assert review is not None
        [reason] = session.scalars(select(PaymentReviewReason)).all()
        assert (reason.check, reason.kind, reason.attestation_seq) == ("jpt_band", "data", 3)
    assert client.get(f"/providers/{identity.address}").json()["payment_held"] is True
