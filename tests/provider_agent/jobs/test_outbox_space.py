"""A disk with too little free space for the outbox (the free-space reader is replaced, the
real disk is not filled): new jobs are refused before the engine until space comes back."""

from __future__ import annotations

from pathlib import Path

from provider_agent.jobs.outbox import MIB, ReceiptOutbox
from tests.provider_agent.jobs.harness import Harness, chat_body, serves_again
from tests.support.openai_upstream import UpstreamProcess


def test_a_nearly_full_disk_refuses_new_jobs_before_the_engine_until_space_returns(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    outbox = harness.service.outbox
    free = [10 * 1024 * MIB]
    asked: list[Path] = []

    def free_bytes(path: Path) -> int:
        asked.append(path)
        return free[0]

    outbox.free_bytes = free_bytes
    outbox.space_check_s = 0.0  # every job looks again
    served = chat_body(max_tokens=5)
    (response,) = harness.send(
        [("/jobs/chat/completions", served, harness.header(harness.ticket(served)))]
    )
    assert response.status_code == 200

    free[0] = 4096  # a few KiB left: a one-byte probe would pass
    refused = chat_body(max_tokens=6)
    streamed = chat_body(stream=True, max_tokens=7)
    responses = harness.send(
        [
            ("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
            for body in (refused, streamed)
        ]
    )
    for response in responses:
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "outbox_unavailable"
        assert "4096 bytes free" in error["message"]
    assert upstream.last_body()["max_tokens"] == 5  # the refused jobs never reached the engine
    assert harness.service.outbox.error is not None
    assert asked
    assert all(path == harness.data_dir for path in asked)

    free[0] = 10 * 1024 * MIB  # space again
    assert serves_again(harness) == [5, 4]


def test_free_space_is_read_at_most_once_per_interval(tmp_path: Path) -> None:
    now = [100.0]
    outbox = ReceiptOutbox(tmp_path, min_free_bytes=64 * MIB, monotonic=lambda: now[0])
    reads: list[int] = []
    free = [32 * MIB]

    def free_bytes(path: Path) -> int:
        reads.append(free[0])
        return free[0]

    outbox.free_bytes = free_bytes
    assert not outbox.writable()
    assert not outbox.writable()
    assert len(reads) == 1  # the answer is kept for space_check_s
    free[0] = 128 * MIB
    assert not outbox.writable()
    now[0] += outbox.space_check_s
    assert outbox.writable()
    assert len(reads) == 2
    assert outbox.error is None
