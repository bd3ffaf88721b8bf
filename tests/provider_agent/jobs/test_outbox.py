"""The receipt outbox: one file per UTC day, the legacy file first, readers that stream."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from protocol.messages import EnergyAttribution, Receipt, Signed, sign
from provider_agent.jobs.outbox import ReceiptOutbox
from tests.provider_agent.jobs.harness import DOMAIN, MODEL, MODEL_DIGEST, PROVIDER, PROVIDER_KEY

DAY_ONE = 1_767_225_599.5  # 2025-12-31T23:59:59.5Z
DAY_TWO = DAY_ONE + 1  # 2026-01-01T00:00:00.5Z


class Clock:
    """Unix seconds that a test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def envelope(n: int, model: str = MODEL) -> Signed[Receipt]:
    receipt = Receipt(
        job_id=f"{n:032x}",
        provider=PROVIDER,
        model=model,
        model_digest=MODEL_DIGEST,
        prompt_tokens=3,
        completion_tokens=2,
        output_digest="0x" + "cd" * 32,
        first_token_at=1_767_225_599_000,
        finished_at=1_767_225_600_000 + n,
        energy=EnergyAttribution(method="unmeasured", basis="test"),
        attestation_seq=None,
        ticket_digest="0x" + "ef" * 32,
        status="complete",
        interrupted_reason=None,
        domain=DOMAIN,
    )
    return sign(receipt, PROVIDER_KEY)


def ids(envelopes: Iterable[Signed[Receipt]]) -> list[int]:
    return [int(e.message.job_id, 16) for e in envelopes]


def over_two_days(data_dir: Path, first: list[int], second: list[int]) -> ReceiptOutbox:
    """An outbox with receipts `first` added on DAY_ONE and `second` on DAY_TWO."""
    clock = Clock(DAY_ONE)
    outbox = ReceiptOutbox(data_dir, clock=clock)
    for n in first:
        outbox.add(envelope(n))
    clock.now = DAY_TWO
    for n in second:
        outbox.add(envelope(n))
    return outbox


def test_appends_rotate_at_the_utc_day_boundary(tmp_path: Path) -> None:
    outbox = over_two_days(tmp_path, [1, 2], [3])
    days = tmp_path / "receipts"
    assert sorted(p.name for p in days.iterdir()) == ["2025-12-31.jsonl", "2026-01-01.jsonl"]
    assert len((days / "2025-12-31.jsonl").read_text().splitlines()) == 2
    assert len((days / "2026-01-01.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "receipts.jsonl").exists()
    assert ids(outbox.all()) == [1, 2, 3]
    assert ids(ReceiptOutbox(tmp_path).all()) == [1, 2, 3]  # a fresh reader sees the same


def test_legacy_file_is_read_first_and_never_written(tmp_path: Path) -> None:
    legacy = tmp_path / "receipts.jsonl"
    legacy.write_text(envelope(1).model_dump_json() + "\n" + envelope(2).model_dump_json() + "\n")
    before = legacy.read_bytes()
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE))
    outbox.add(envelope(3))
    assert legacy.read_bytes() == before
    assert outbox.paths() == [legacy, tmp_path / "receipts" / "2025-12-31.jsonl"]
    assert ids(outbox.all()) == [1, 2, 3]


def test_a_torn_last_line_is_skipped_in_each_file(tmp_path: Path) -> None:
    clock = Clock(DAY_ONE)
    outbox = ReceiptOutbox(tmp_path, clock=clock)
    legacy = tmp_path / "receipts.jsonl"
    legacy.write_text(envelope(1).model_dump_json() + "\n" + envelope(2).model_dump_json()[:40])
    outbox.add(envelope(3))
    with (tmp_path / "receipts" / "2025-12-31.jsonl").open("a") as day:
        day.write(envelope(4).model_dump_json()[:-1])  # cut just before the closing brace
    clock.now = DAY_TWO
    outbox.add(envelope(5))
    assert ids(outbox.all()) == [1, 3, 5]
    assert ids(outbox.unsent()) == [1, 3, 5]
    assert outbox.count_unsent() == 3


def test_a_restarted_agent_appends_after_a_torn_line_not_onto_it(tmp_path: Path) -> None:
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE))
    outbox.add(envelope(1))
    with (tmp_path / "receipts" / "2025-12-31.jsonl").open("a") as day:
        day.write(envelope(2).model_dump_json()[:40])  # killed mid-append
    restarted = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE))
    restarted.add(envelope(3))
    assert ids(restarted.all()) == [1, 3]
    assert restarted.count_unsent() == 2


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_a_receipt_that_fails_half_written_leaves_only_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE), fsync=True)
    outbox.add(envelope(1))
    day_file = tmp_path / "receipts" / "2025-12-31.jsonl"
    before = day_file.read_bytes()
    write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        """Store half of `data`, then fail as a full disk does."""
        write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as disk:
        if failing == "write":
            disk.setattr(os, "write", half_then_full)
        else:
            disk.setattr(os, "fsync", full)
        with pytest.raises(OSError, match="No space left"):
            outbox.add(envelope(2))
    assert "No space left" in str(outbox.error)
    assert day_file.read_bytes() == before  # cut back: no torn line

    assert outbox.writable()
    assert day_file.read_bytes() == before  # the probe leaves nothing behind
    outbox.add(envelope(3))
    assert day_file.read_bytes() == before + envelope(3).model_dump_json().encode() + b"\n"
    assert outbox.error is None
    assert ids(outbox.unsent()) == [1, 3]
    assert not outbox.unpaid_path.exists()  # nothing set aside as unreadable


def test_a_torn_line_left_by_a_failed_cut_is_ended_before_the_next_receipt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE))
    outbox.add(envelope(1))
    write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def refused(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as disk:
        disk.setattr(os, "write", half_then_full)
        disk.setattr(os, "ftruncate", refused)
        with pytest.raises(OSError, match="No space left"):
            outbox.add(envelope(2))
    outbox.add(envelope(3))
    assert ids(outbox.unsent()) == [1, 3]
    assert not outbox.unpaid_path.exists()


def test_unsent_leaves_out_acknowledged_receipts_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "receipts.jsonl").write_text(envelope(1).model_dump_json() + "\n")
    outbox = over_two_days(tmp_path, [2, 3], [4, 5])
    assert outbox.count_unsent() == len(list(outbox.unsent())) == 5
    outbox.mark_sent([f"{n:032x}" for n in (1, 3, 4)])
    assert ids(outbox.unsent()) == [2, 5]
    assert outbox.count_unsent() == len(list(outbox.unsent())) == 2
    assert ids(outbox.all()) == [1, 2, 3, 4, 5]


def test_a_job_id_is_read_from_its_own_key_not_from_free_text(tmp_path: Path) -> None:
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE))
    outbox.add(envelope(1, model=f'x","job_id":"{2:032x}"'))
    outbox.add(envelope(2))
    outbox.mark_sent([f"{2:032x}"])
    assert ids(outbox.unsent()) == [1]
    assert outbox.count_unsent() == 1


def test_unpaid_answers_are_kept_one_per_line(tmp_path: Path) -> None:
    outbox = ReceiptOutbox(tmp_path)
    outbox.record_unpaid([{"job_id": "a" * 32, "state": "closed", "detail": "abandoned"}])
    outbox.record_unpaid([])
    outbox.record_unpaid([{"job_id": "b" * 32, "state": "unknown", "detail": None}])
    assert outbox.unpaid_path.read_text().splitlines() == [
        '{"detail": "abandoned", "job_id": "' + "a" * 32 + '", "state": "closed"}',
        '{"detail": null, "job_id": "' + "b" * 32 + '", "state": "unknown"}',
    ]


def test_an_empty_outbox(tmp_path: Path) -> None:
    outbox = ReceiptOutbox(tmp_path / "data")
    assert outbox.paths() == []
    assert list(outbox.all()) == []
    assert list(outbox.unsent()) == []
    assert outbox.count_unsent() == 0


def test_readers_stream_instead_of_loading_everything(tmp_path: Path) -> None:
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE))
    for n in range(1, 4):
        outbox.add(envelope(n))
    unsent = outbox.unsent()
    assert isinstance(unsent, Iterator)
    assert not isinstance(outbox.all(), list)
    assert ids([next(unsent)]) == [1]
    # The next line is read only when asked for: a receipt appended now still shows up.
    outbox.add(envelope(4))
    assert ids(unsent) == [2, 3, 4]


def test_the_day_path_is_recomputed_only_when_the_day_changes(tmp_path: Path) -> None:
    clock = Clock(DAY_ONE)
    outbox = ReceiptOutbox(tmp_path, clock=clock)
    outbox.add(envelope(1))
    first = outbox._current_path()
    clock.now = DAY_ONE + 0.4  # still the same UTC day
    assert outbox._current_path() is first
    clock.now = DAY_TWO
    assert outbox._current_path() == tmp_path / "receipts" / "2026-01-01.jsonl"


def test_a_day_file_removed_while_open_is_created_again(tmp_path: Path) -> None:
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE))
    outbox.add(envelope(1))
    day_file = tmp_path / "receipts" / "2025-12-31.jsonl"
    day_file.unlink()  # the operator removed it while the agent ran
    outbox.add(envelope(2))
    assert ids(outbox.all()) == [2]
    assert day_file.read_bytes().count(b"\n") == 1


def test_appends_after_close_reopen_the_day_file(tmp_path: Path) -> None:
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE), fsync=True)
    outbox.add(envelope(1))
    outbox.close()
    outbox.close()  # closing twice is harmless
    outbox.add(envelope(2))
    assert ids(outbox.all()) == [1, 2]
    assert ReceiptOutbox(tmp_path).count_unsent() == 2


def _job_ids(*numbers: int) -> list[str]:
    return [f"{n:032x}" for n in numbers]


def test_a_past_day_whose_receipts_were_all_answered_is_sealed(tmp_path: Path) -> None:
    (tmp_path / "receipts.jsonl").write_text(envelope(1).model_dump_json() + "\n")
    outbox = over_two_days(tmp_path, [2, 3], [4, 5])  # the clock is on day two
    day_one = tmp_path / "receipts" / "2025-12-31.jsonl"
    day_two = tmp_path / "receipts" / "2026-01-01.jsonl"
    outbox.mark_sent(_job_ids(1, 2))
    assert outbox.seal_answered() == [tmp_path / "receipts.jsonl"]  # day one waits for 3

    outbox.mark_sent(_job_ids(3, 4, 5))
    assert outbox.seal_answered() == [day_one]  # today's file is never sealed
    assert outbox.seal_answered() == []
    assert (tmp_path / "receipts" / "2025-12-31.jsonl.answered").exists()
    assert not (tmp_path / "receipts" / "2026-01-01.jsonl.answered").exists()
    # the sealed files' ids left the answered set; the scans skip those files
    assert sorted(json.loads(line) for line in outbox.sent_path.read_text().splitlines()) == (
        _job_ids(4, 5)
    )
    assert list(outbox.unsent()) == []
    assert ReceiptOutbox(tmp_path).count_unsent() == 0
    assert ids(outbox.all()) == [1, 2, 3, 4, 5]  # nothing deleted
    assert day_two.exists()


def test_a_receipt_appended_to_a_sealed_day_unseals_it(tmp_path: Path) -> None:
    clock = Clock(DAY_ONE)
    outbox = ReceiptOutbox(tmp_path, clock=clock)
    outbox.add(envelope(1))
    clock.now = DAY_TWO  # the appender adds nothing on day two: it still holds day one open
    sync = ReceiptOutbox(tmp_path, clock=clock)  # the receipt sync's own instance
    sync.mark_sent(_job_ids(1))
    assert sync.seal_answered() == [tmp_path / "receipts" / "2025-12-31.jsonl"]

    clock.now = DAY_ONE  # the clock went back
    outbox.add(envelope(2))

    assert ids(outbox.unsent()) == [1, 2]  # 1 is asked about again: its id was dropped
    assert not (tmp_path / "receipts" / "2025-12-31.jsonl.answered").exists()


def test_a_whole_line_that_does_not_parse_is_set_aside_once(tmp_path: Path) -> None:
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE))
    outbox.add(envelope(1))
    tampered = envelope(2).model_dump_json().replace('"signature":"0x', '"signature":"zz')
    with (tmp_path / "receipts" / "2025-12-31.jsonl").open("a") as day:
        day.write(tampered + "\n{not json}\n")
    outbox.add(envelope(3))

    assert ids(outbox.unsent()) == [1, 3]  # the bad lines stop nothing

    unpaid = [json.loads(line) for line in outbox.unpaid_path.read_text().splitlines()]
    assert [(u["job_id"], u["state"]) for u in unpaid] == [
        (f"{2:032x}", "unreadable"),
        (None, "unreadable"),
    ]
    assert all(u["detail"].startswith("the outbox's copy does not parse") for u in unpaid)
    assert ids(outbox.unsent()) == [1, 3]
    assert len(outbox.unpaid_path.read_text().splitlines()) == 2  # set aside only once
    assert outbox.count_unsent() == 2

    outbox.mark_sent(_job_ids(1, 3))
    outbox._clock = Clock(DAY_TWO)
    # the set-aside lines count as answered: the day can be sealed
    assert outbox.seal_answered() == [tmp_path / "receipts" / "2025-12-31.jsonl"]
    assert outbox.sent_path.read_text() == ""


def test_a_torn_answered_id_is_asked_about_again_and_appends_go_on_after_it(
    tmp_path: Path,
) -> None:
    outbox = ReceiptOutbox(tmp_path, clock=Clock(DAY_ONE))
    for n in (1, 2, 3):
        outbox.add(envelope(n))
    outbox.mark_sent(_job_ids(1))
    with outbox.sent_path.open("a") as sent:
        sent.write(json.dumps(_job_ids(2)[0])[:20])  # killed mid-append
    outbox.unpaid_path.write_text('{"job_id": "')  # the same, in the unpaid list

    assert ids(outbox.unsent()) == [2, 3]
    outbox.mark_sent(_job_ids(3))
    outbox.record_unpaid([{"job_id": _job_ids(3)[0], "state": "closed", "detail": None}])

    assert ids(outbox.unsent()) == [2]
    assert outbox.sent_path.read_text().splitlines()[-1] == json.dumps(_job_ids(3)[0])
    assert json.loads(outbox.unpaid_path.read_text().splitlines()[-1])["state"] == "closed"
