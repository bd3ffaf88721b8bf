"""Attestations form a hash chain: gaps, reorders, forks and overlaps show."""

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import BrokenChainError
from protocol.messages import (
    ZERO_HASH,
    Attestation,
    Domain,
    check_chain,
    message_digest,
    signing_bytes,
)

VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text(encoding="utf-8"))
FIRST = Attestation.model_validate(VECTORS["messages"]["attestation_seq0"]["message"])


def following(previous: Attestation, **changes: Any) -> Attestation:
    """The attestation for the window after `previous`, with optional field changes."""
    data = previous.model_dump()
    data.update(
        seq=previous.seq + 1,
        prev_hash=message_digest(previous),
        window_start=previous.window_end,
        window_end=previous.window_end + 60_000,
    )
    data.update(changes)
    return Attestation.model_validate(data)


def test_digest_is_sha256_of_the_signing_bytes() -> None:
    expected = "0x" + hashlib.sha256(signing_bytes(FIRST)).hexdigest()
    assert message_digest(FIRST) == expected == VECTORS["messages"]["attestation_seq0"]["digest"]


def test_a_straight_chain_passes() -> None:
    second = following(FIRST)
    third = following(second)
    check_chain(None, FIRST)
    check_chain(FIRST, second)
    check_chain(second, third)
    assert FIRST.prev_hash == ZERO_HASH
    assert third.prev_hash == message_digest(second) != message_digest(FIRST)


def test_a_gap_in_time_is_allowed() -> None:
    later = following(
        FIRST, window_start=FIRST.window_end + 3_600_000, window_end=FIRST.window_end + 3_660_000
    )
    check_chain(FIRST, later)


def test_first_attestation_must_start_at_zero() -> None:
    with pytest.raises(BrokenChainError, match="expected 0"):
        check_chain(None, following(FIRST))


def test_skipped_seq_is_caught() -> None:
    second = following(FIRST)
    with pytest.raises(BrokenChainError, match="seq 2 does not follow 0"):
        check_chain(FIRST, following(second))


def test_reordered_attestations_are_caught() -> None:
    second = following(FIRST)
    with pytest.raises(BrokenChainError, match="does not follow"):
        check_chain(second, FIRST)


def test_a_fork_is_caught() -> None:
    second = following(FIRST)
    rewritten = following(FIRST, avg_running_requests_milli=1)
    third = following(second)
    with pytest.raises(BrokenChainError, match="prev_hash"):
        check_chain(rewritten, third)


def test_overlapping_windows_are_caught() -> None:
    overlapping = following(FIRST, window_start=FIRST.window_end - 1)
    with pytest.raises(BrokenChainError, match="overlaps"):
        check_chain(FIRST, overlapping)


@pytest.mark.parametrize(
    "changes",
    [
        {"provider": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"},
        {"domain": Domain(chain_id=1, settlement_contract=FIRST.domain.settlement_contract)},
    ],
)
def test_provider_or_domain_cannot_change_mid_chain(changes: dict[str, Any]) -> None:
    with pytest.raises(BrokenChainError, match="provider or domain"):
        check_chain(FIRST, following(FIRST, **changes))
