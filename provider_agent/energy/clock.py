"""The two clocks every reading is stamped with."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], tuple[int, int]]
"""Returns (monotonic ns, wall-clock unix ms)."""


def system_clock() -> tuple[int, int]:
    """Monotonic nanoseconds for durations, unix milliseconds (UTC) for the record."""
    return time.monotonic_ns(), time.time_ns() // 1_000_000
