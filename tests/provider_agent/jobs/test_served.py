"""The served totals count exactly the receipts stored in the outbox."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from provider_agent.energy import EstimatedMeter
from provider_agent.jobs.outbox import ReceiptOutbox
from tests.provider_agent.jobs.harness import Harness, chat_body
from tests.support.openai_upstream import UpstreamProcess

CHAT = "/jobs/chat/completions"


def _jobs(harness: Harness, *bodies: bytes) -> list[int]:
    """Each body sent as its own job, one after another; the answers' statuses."""
    requests = [(CHAT, body, harness.header(harness.ticket(body))) for body in bodies]
    return [response.status_code for response in harness.send(requests)]


def test_the_totals_are_those_of_the_stored_receipts(
    upstream: UpstreamProcess, tmp_path: Path
) -> None:
    upstream.control()
    meter = EstimatedMeter(300.0, "declared power (test)")
    harness = Harness(upstream.url, tmp_path / "agent", meter=meter)
    plain, streamed = chat_body(max_tokens=5), chat_body(stream=True, max_tokens=7)
    assert _jobs(harness, plain, streamed) == [200, 200]
    refused = harness.post(CHAT, plain, {})  # no ticket: refused before the engine
    assert refused.status_code == 401
    upstream.control(die_after_chunks=3)  # a stream that breaks off after two tokens
    assert _jobs(harness, chat_body(stream=True)) == [200]

    receipts = [envelope.message for envelope in ReceiptOutbox(harness.data_dir).all()]
    assert [(r.status, r.completion_tokens) for r in receipts] == [
        ("complete", 5),
        ("complete", 7),
        ("interrupted", 2),
    ]
    assert {r.energy.method for r in receipts} == {"estimated"}
    assert all(r.energy.millijoules is not None for r in receipts)
    served = harness.service.issuer.served.as_status()
    assert served == {
        "receipts": {"complete": {"estimated": 2}, "interrupted": {"estimated": 1}},
        "prompt_tokens": sum(r.prompt_tokens for r in receipts),
        "completion_tokens": 14,
        "energy_millijoules": {"estimated": sum(r.energy.millijoules or 0 for r in receipts)},
    }


def test_unmeasured_receipts_are_counted_and_add_no_joules(harness: Harness) -> None:
    assert _jobs(harness, chat_body(max_tokens=3)) == [200]
    (envelope,) = ReceiptOutbox(harness.data_dir).all()
    assert envelope.message.energy.method == "unmeasured"
    served = harness.service.issuer.served
    assert served.receipts == Counter({("complete", "unmeasured"): 1})
    assert served.as_status()["energy_millijoules"] == {}
    assert served.completion_tokens == 3
