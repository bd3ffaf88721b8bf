"""A receipt outbox that cannot be written (a full disk, here `/dev/full`): JSON errors, no
receipt sent that is not stored, and new jobs refused before the engine until it can."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.provider_agent.jobs.harness import Harness, chat_body, serves_again, sse_events
from tests.support.openai_upstream import UpstreamProcess

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


def full_disk(data_dir: Path) -> Path:
    """Today's receipt file made a link to `/dev/full`: every write fails with ENOSPC."""
    day = data_dir / "receipts" / f"{datetime.now(UTC).date().isoformat()}.jsonl"
    day.parent.mkdir(parents=True, exist_ok=True)
    day.symlink_to("/dev/full")
    return day


def test_a_full_outbox_answers_json_and_refuses_new_jobs_before_the_engine(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    day = full_disk(harness.data_dir)
    first = chat_body(max_tokens=5)
    second = chat_body(max_tokens=6)
    streamed = chat_body(stream=True, max_tokens=7)
    served, refused, refused_stream = harness.send(
        [
            ("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
            for body in (first, second, streamed)
        ]
    )

    assert served.status_code == 503
    assert served.json()["error"]["code"] == "outbox_unavailable"
    assert "No space left on device" in served.json()["error"]["message"]
    for response in (refused, refused_stream):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == "outbox_unavailable"
    assert upstream.last_body()["max_tokens"] == 5  # the refused jobs never reached the engine
    assert harness.service.outbox.error is not None

    day.unlink()  # space again
    assert serves_again(harness) == [4]


def test_a_stream_whose_receipt_cannot_be_stored_ends_with_an_error_event(
    harness: Harness,
) -> None:
    body = chat_body(stream=True, max_tokens=3)
    header = harness.header(harness.ticket(body))
    full_disk(harness.data_dir)
    (response,) = harness.send([("/jobs/chat/completions", body, header)])
    assert response.status_code == 200  # the stream had started
    events = sse_events(response.text)
    name, data = events[-1]
    assert name == "error"
    assert json.loads(data)["error"]["code"] == "outbox_unavailable"
    assert "receipt" not in [name for name, _ in events]
