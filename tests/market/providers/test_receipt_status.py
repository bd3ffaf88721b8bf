"""`POST /providers/receipts/status` on the real app, SQLite and PostgreSQL: what the market
holds of an agent's receipts, answered per receipt, without charging or storing anything."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from market.db import session_scope
from market.demo.ports import free_port
from market.jobs.models import Job, Receipt
from market.jobs.service import complete_job, fail_job, open_job
from market.ledger.models import Posting
from market.providers.models import Provider
from market.runtime import Runtime
from protocol.keys import ProviderIdentity
from protocol.messages import Domain, EnergyAttribution, Signed, sign
from protocol.messages import Receipt as SignedReceipt
from provider_agent.jobs.outbox import ReceiptOutbox
from provider_agent.market_client import MarketClient
from provider_agent.receipt_sync import SyncResult, sync_receipts
from tests.market.factories import funded_buyer, job_order

MODEL = "tiny-llama"
URL = "/providers/receipts/status"


def _receipt(job_id: str, provider: str, domain: Domain, tokens: int = 5) -> SignedReceipt:
    return SignedReceipt(
        job_id=job_id,
        provider=provider,
        model=MODEL,
        model_digest="0x" + "11" * 32,
        prompt_tokens=3,
        completion_tokens=tokens,
        output_digest="0x" + "22" * 32,
        first_token_at=1_767_225_600_000,
        finished_at=1_767_225_600_900,
        energy=EnergyAttribution(method="unmeasured"),
        attestation_seq=None,
        ticket_digest="0x" + "33" * 32,
        status="complete",
        interrupted_reason=None,
        domain=domain,
    )


class Jobs:
    """One provider's jobs in each state the route tells apart, and their receipts."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.domain = runtime.chain.domain
        self.provider = ProviderIdentity.generate()
        with session_scope(runtime.sessions) as session:
            session.add(
                Provider(
                    address=self.provider.address,
                    public_key=self.provider.public_key_hex,
                    registration_issued_at_ms=1,
                )
            )
            self.buyer = funded_buyer(session, 10**9)

    def envelope(self, job_id: str, tokens: int = 5) -> Signed[SignedReceipt]:
        """The provider's receipt for `job_id`."""
        return sign(
            _receipt(job_id, self.provider.address, self.domain, tokens), self.provider.signing_key
        )

    def open(self) -> str:
        """A routed job of this provider."""
        job_id = secrets.token_hex(16)
        with session_scope(self.runtime.sessions) as session:
            open_job(session, job_order(job_id, self.buyer, self.provider.address, MODEL))
        return job_id

    def completed(self) -> tuple[str, Signed[SignedReceipt]]:
        """A job charged on its receipt, and that receipt."""
        job_id, envelope = self.open(), None
        envelope = self.envelope(job_id)
        with session_scope(self.runtime.sessions) as session:
            complete_job(session, job_id, envelope.message, envelope.model_dump_json(), 500)
        return job_id, envelope

    def failed(self, reason: str) -> str:
        """A job that ended without a receipt."""
        job_id = self.open()
        with session_scope(self.runtime.sessions) as session:
            fail_job(session, job_id, reason)
        return job_id


def _post(client: TestClient, envelopes: list[Any]) -> list[dict[str, Any]]:
    response = client.post(URL, json={"receipts": envelopes})
    assert response.status_code == 200, response.text
    answers: list[dict[str, Any]] = response.json()["receipts"]
    return answers


def _json(envelope: Signed[SignedReceipt]) -> Any:
    return envelope.model_dump(mode="json")


def _ledger_size(runtime: Runtime) -> tuple[int, int]:
    with session_scope(runtime.sessions) as session:
        postings = session.scalar(select(func.count()).select_from(Posting))
        receipts = session.scalar(select(func.count()).select_from(Receipt))
    return int(postings or 0), int(receipts or 0)


def test_each_receipt_gets_the_state_of_its_job(client: TestClient, runtime: Runtime) -> None:
    jobs = Jobs(runtime)
    recorded, held = jobs.completed()
    in_flight = jobs.open()
    closed = jobs.failed("provider stream broke off: ReadError()")
    differs, _ = jobs.completed()
    unknown = secrets.token_hex(16)
    before = _ledger_size(runtime)

    posted = [
        _json(held),
        _json(jobs.envelope(in_flight)),
        _json(jobs.envelope(closed)),
        _json(jobs.envelope(differs, tokens=6)),
        _json(jobs.envelope(unknown)),
    ]
    answers = _post(client, posted)

    with session_scope(runtime.sessions) as session:
        differs_hash = session.get(Receipt, differs).receipt_hash  # type: ignore[union-attr]
    assert answers == [
        {"job_id": recorded, "state": "recorded", "final": True, "detail": None},
        {"job_id": in_flight, "state": "in_flight", "final": False, "detail": None},
        {
            "job_id": closed,
            "state": "closed",
            "final": True,
            "detail": "provider stream broke off: ReadError()",
        },
        {"job_id": differs, "state": "differs", "final": True, "detail": differs_hash},
        {"job_id": unknown, "state": "unknown", "final": True, "detail": None},
    ]
    # it only reads: nothing charged, nothing stored, the open job still open
    assert _ledger_size(runtime) == before
    assert _post(client, posted) == answers
    with session_scope(runtime.sessions) as session:
        assert session.get(Job, in_flight).status == "routed"  # type: ignore[union-attr]


def test_only_the_jobs_provider_learns_about_it(client: TestClient, runtime: Runtime) -> None:
    jobs = Jobs(runtime)
    closed = jobs.failed("abandoned")
    recorded, held = jobs.completed()
    stranger = ProviderIdentity.generate()

    # the job's provider in the message, another key's signature: refused, nothing told
    forged = sign(_receipt(closed, jobs.provider.address, jobs.domain), stranger.signing_key)
    # another address in the message: no such job for that provider
    elsewhere = sign(_receipt(closed, stranger.address, jobs.domain), stranger.signing_key)
    # the held receipt with one field changed and its signature kept
    tampered = _json(held)
    tampered["message"]["completion_tokens"] = 6
    other_domain = Domain(chain_id=1, settlement_contract=jobs.domain.settlement_contract)
    wrong_domain = sign(
        _receipt(closed, jobs.provider.address, other_domain), jobs.provider.signing_key
    )

    # the held message under another key's signature
    resigned = sign(held.message, stranger.signing_key)
    # the held message and signer with a signature that is not the provider's
    bad_signature = _json(held) | {"signature": "0x" + "ee" * 64}
    posted = [
        _json(forged),
        _json(elsewhere),
        tampered,
        _json(wrong_domain),
        _json(resigned),
        bad_signature,
    ]

    answers = _post(client, posted)

    assert [(a["job_id"], a["state"]) for a in answers] == [
        (closed, "refused"),
        (closed, "unknown"),
        (recorded, "refused"),
        (closed, "refused"),
        (recorded, "refused"),
        (recorded, "refused"),
    ]
    assert answers[0]["detail"] == (
        f"signed by {stranger.public_key_hex}, expected {jobs.provider.public_key_hex}"
    )
    assert answers[2]["detail"] == "receipt signature does not verify"
    assert "is for" in answers[3]["detail"]
    assert all(a["final"] for a in answers)


def test_a_rotated_key_refuses_what_it_did_not_sign_but_still_matches_what_is_held(
    client: TestClient, runtime: Runtime
) -> None:
    jobs = Jobs(runtime)
    recorded, held = jobs.completed()
    closed = jobs.failed("abandoned")
    late = jobs.envelope(closed)
    rotated = ProviderIdentity.generate()
    with session_scope(runtime.sessions) as session:
        row = session.get(Provider, jobs.provider.address)
        assert row is not None
        row.public_key = rotated.public_key_hex

    answers = _post(client, [_json(held), _json(late)])

    assert [(a["job_id"], a["state"]) for a in answers] == [
        (recorded, "recorded"),
        (closed, "refused"),
    ]


def test_a_malformed_envelope_is_refused_alone(client: TestClient, runtime: Runtime) -> None:
    jobs = Jobs(runtime)
    recorded, held = jobs.completed()
    no_signature = {"message": _json(held)["message"], "signer": "0x" + "00" * 32}

    answers = _post(client, [no_signature, "not an envelope", _json(held)])

    assert answers[0]["job_id"] == recorded
    assert answers[0]["state"] == "refused"
    assert answers[0]["detail"] == "malformed receipt envelope: signature: Field required"
    assert answers[1] == {
        "job_id": None,
        "state": "refused",
        "final": True,
        "detail": answers[1]["detail"],
    }
    assert answers[1]["detail"].startswith("malformed receipt envelope: $:")
    assert answers[2]["state"] == "recorded"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"receipts": []}, "List should have at least 1 item after validation, not 0"),
        ({"receipts": [{}] * 501}, "List should have at most 500 items after validation, not 501"),
        ({}, "Field required"),
    ],
)
def test_an_empty_or_oversized_batch_is_refused_whole(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    response = client.post(URL, json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "receipts"
    assert response.json()["error"]["message"] == f"receipts: {message}"


def _sync(
    jobs: Jobs, outbox: ReceiptOutbox, app: Any = None, url: str = "http://market"
) -> SyncResult:
    """The agent's sync over HTTP to `app` (in process), or to `url` when no app is given."""

    async def run() -> SyncResult:
        transport = None if app is None else httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, timeout=5) as http:
            market = MarketClient(url, jobs.provider, jobs.domain, http=http)
            return await sync_receipts(outbox, market, batch=2)

    return asyncio.run(run())


def test_the_agents_sync_marks_only_final_answers(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    jobs = Jobs(runtime)
    _, held = jobs.completed()
    in_flight, closed = jobs.open(), jobs.failed("abandoned")
    late = jobs.envelope(in_flight)
    now = [time.time() - 86_400]  # the receipts were signed yesterday
    outbox = ReceiptOutbox(tmp_path, clock=lambda: now[0])
    for envelope in (held, late, jobs.envelope(closed)):
        outbox.add(envelope)
    now[0] += 86_400
    (yesterday,) = outbox.paths()
    sealed = yesterday.with_name(yesterday.name + ".answered")

    first = _sync(jobs, outbox, client.app)

    assert (first.states, first.error) == ({"recorded": 1, "in_flight": 1, "closed": 1}, None)
    assert [e.message.job_id for e in outbox.unsent()] == [in_flight]
    assert not sealed.exists()
    # the open job is then charged on that very receipt: the next sync finds it recorded
    with session_scope(runtime.sessions) as session:
        complete_job(session, in_flight, late.message, late.model_dump_json(), 500)
    second = _sync(jobs, outbox, client.app)
    assert second.states == {"recorded": 1}
    assert outbox.count_unsent() == 0
    assert sealed.exists()  # every receipt of that day answered: later syncs skip the file
    assert not outbox.sent_path.read_text()
    assert _sync(jobs, outbox, client.app).states == {}
    unpaid = outbox.unpaid_path.read_text().splitlines()
    assert unpaid == [f'{{"detail": "abandoned", "job_id": "{closed}", "state": "closed"}}']


def test_an_unreadable_outbox_line_is_set_aside_and_the_sync_goes_on(
    client: TestClient, runtime: Runtime, tmp_path: Path
) -> None:
    jobs = Jobs(runtime)
    (_, damaged), (_, held) = jobs.completed(), jobs.completed()
    outbox = ReceiptOutbox(tmp_path)
    outbox.add(damaged)
    (day,) = outbox.paths()
    day.write_text(day.read_text().replace('"signature":"0x', '"signature":"0X'))
    outbox.add(held)

    result = _sync(jobs, outbox, client.app)

    assert (result.states, result.error) == ({"recorded": 1}, None)
    assert outbox.count_unsent() == 0
    (unpaid,) = [json.loads(line) for line in outbox.unpaid_path.read_text().splitlines()]
    assert (unpaid["job_id"], unpaid["state"]) == (damaged.message.job_id, "unreadable")


def test_a_sync_the_market_does_not_answer_marks_nothing(runtime: Runtime, tmp_path: Path) -> None:
    jobs = Jobs(runtime)
    outbox = ReceiptOutbox(tmp_path)
    outbox.add(jobs.envelope(jobs.open()))

    result = _sync(jobs, outbox, url=f"http://127.0.0.1:{free_port()}")

    assert result.states == {}
    assert str(result.error).startswith("market unreachable at ")
    assert outbox.count_unsent() == 1
    assert not outbox.unpaid_path.exists()
