"""Accepted jobs: JSON and streamed answers carry a receipt the provider's key verifies."""

from __future__ import annotations

import json

from protocol.keys import public_key_hex
from protocol.messages import (
    Receipt,
    check_receipt_matches_ticket,
    output_digest,
    parse_signed,
    verify,
)
from tests.provider_agent.jobs.harness import (
    DOMAIN,
    MODEL_DIGEST,
    NOW_MS,
    PROVIDER_KEY,
    Harness,
    chat_body,
    sse_events,
)
from tests.support.openai_upstream import UpstreamProcess


def _receipt(envelope: object, harness: Harness) -> Receipt:
    signed = parse_signed(json.dumps(envelope), Receipt)
    return verify(signed, public_key_hex(PROVIDER_KEY), DOMAIN)


def test_chat_json_answer_has_verified_receipt(harness: Harness, upstream: UpstreamProcess) -> None:
    body = chat_body(max_tokens=5)
    ticket = harness.ticket(body)
    response = harness.post("/jobs/chat/completions", body, harness.header(ticket))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == "t0 t1 t2 t3 t4 "
    receipt = _receipt(answer["receipt"], harness)
    check_receipt_matches_ticket(receipt, ticket)
    assert receipt.completion_tokens == 5
    assert receipt.prompt_tokens == answer["usage"]["prompt_tokens"]
    assert receipt.output_digest == output_digest([1000, 1001, 1002, 1003, 1004])
    assert receipt.model_digest == MODEL_DIGEST
    assert receipt.first_token_at == receipt.finished_at == NOW_MS
    assert receipt.energy.method == "unmeasured"
    assert receipt.energy.millijoules is None
    assert receipt.energy.basis == "NVML absent (test)"
    sent = upstream.last_body()
    assert sent["return_token_ids"] is True
    assert sent["temperature"] == 0.0
    assert [e.message for e in harness.service.outbox.unsent()] == [receipt]


def test_missing_max_tokens_is_capped_by_ticket(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    body = chat_body(max_tokens=None)
    ticket = harness.ticket(body, max_tokens=3)
    response = harness.post("/jobs/chat/completions", body, harness.header(ticket))
    assert response.status_code == 200, response.text
    assert upstream.last_body()["max_tokens"] == 3
    assert _receipt(response.json()["receipt"], harness).completion_tokens == 3


def test_completions_stream_relays_chunks_then_receipt(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    body = json.dumps(
        {"model": "tiny-llama", "prompt": "Once", "max_tokens": 4, "stream": True}
    ).encode()
    ticket = harness.ticket(body)
    response = harness.post("/jobs/completions", body, harness.header(ticket))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[-2:] == ["receipt", "message"]
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for name, data in events[:-2]]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert texts == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    receipt = _receipt(json.loads(events[-2][1]), harness)
    check_receipt_matches_ticket(receipt, ticket)
    assert receipt.output_digest == output_digest([1000, 1001, 1002, 1003])
    assert receipt.completion_tokens == 4
    assert upstream.last_body()["stream_options"] == {"include_usage": True}
    assert len(list(harness.service.outbox.unsent())) == 1


def test_chat_stream_keeps_buyer_stream_options(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    upstream.control(completion_tokens=3, delay_ms=5)
    body = chat_body(stream=True, stream_options={"continuous_usage_stats": False})
    ticket = harness.ticket(body)
    response = harness.post("/jobs/chat/completions", body, harness.header(ticket))
    events = sse_events(response.text)
    assert [name for name, _ in events].count("receipt") == 1
    receipt = _receipt(json.loads(events[-2][1]), harness)
    assert receipt.completion_tokens == 3
    assert receipt.first_token_at is not None
    assert upstream.last_body()["stream_options"] == {
        "continuous_usage_stats": False,
        "include_usage": True,
    }


def test_outbox_lists_only_unacknowledged(harness: Harness) -> None:
    requests = []
    for _ in range(3):
        body = chat_body(max_tokens=2)
        requests.append(("/jobs/chat/completions", body, harness.header(harness.ticket(body))))
    responses = harness.send(requests)
    assert [r.status_code for r in responses] == [200, 200, 200]
    outbox = harness.service.outbox
    ids = [e.message.job_id for e in outbox.unsent()]
    assert len(ids) == 3
    outbox.mark_sent(ids[:2])
    assert [e.message.job_id for e in outbox.unsent()] == ids[2:]
    assert len(list(outbox.all())) == 3
