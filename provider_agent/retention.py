"""Retention: which of the agent's day-named files `run.retention_days` lets it delete.

Unset (the default), the agent deletes nothing. Set to N days, it deletes what the market has
answered or acknowledged once its UTC day is more than N days before today's: the sealed
receipt day files (`ReceiptOutbox.remove_sealed`) and the attestation archive files
(`AttestationLog.remove_archived`). Days are counted as whole UTC days since the epoch (no
date arithmetic to overflow for a large N); today's files are never old enough.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date
from pathlib import Path

log = logging.getLogger(__name__)

DAY_S = 86_400
"""Seconds in a UTC day: unix time counts no leap seconds, so `t // DAY_S` is the day."""
_EPOCH = date(1970, 1, 1)


def oldest_kept(now_s: float, retention_days: int) -> int:
    """The oldest UTC day (days since the epoch) kept: `retention_days` before today's."""
    return int(now_s // DAY_S) - retention_days


def day_of(name: str) -> int | None:
    """The UTC day (days since the epoch) a file name starts with (`YYYY-MM-DD...`); `None`
    when it starts with no date."""
    try:
        return (date.fromisoformat(name[:10]) - _EPOCH).days
    except ValueError:
        return None


def remove(paths: Iterable[Path], what: str) -> list[Path]:
    """Delete `paths` and log how many and how many bytes; the paths deleted. A file already
    gone is skipped; one that cannot be deleted is logged and kept."""
    removed, freed = [], 0
    for path in paths:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("%s %s not deleted: %s", what, path, exc)
            continue
        removed.append(path)
        freed += size
    if removed:
        log.info("retention: %d %s deleted, %d bytes freed", len(removed), what, freed)
    return removed
