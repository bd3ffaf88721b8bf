"""What the agent has signed receipts for since it started: the work it can be paid for.

Counted when a receipt is stored in the outbox (a receipt that could not be stored was never
sent, so it is not counted). The energy is what the receipts attribute to their requests,
by method: `measured` and `estimated` joules are kept apart, and a receipt whose energy was
`unmeasured` adds to the receipt count only, never a figure.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from protocol.messages import Receipt


class ServedTotals:
    """Receipts by (status, energy method), tokens, and attributed millijoules by method."""

    def __init__(self) -> None:
        self.receipts: Counter[tuple[str, str]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.millijoules: Counter[str] = Counter()

    def add(self, receipt: Receipt) -> None:
        """Count one stored receipt."""
        energy = receipt.energy
        self.receipts[receipt.status, energy.method] += 1
        self.prompt_tokens += receipt.prompt_tokens
        self.completion_tokens += receipt.completion_tokens
        if energy.millijoules is not None:
            self.millijoules[energy.method] += energy.millijoules

    def as_status(self) -> dict[str, Any]:
        """The totals as `GET /agent/status` shows them."""
        receipts: dict[str, dict[str, int]] = {}
        for (status, method), count in sorted(self.receipts.items()):
            receipts.setdefault(status, {})[method] = count
        return {
            "receipts": receipts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "energy_millijoules": dict(sorted(self.millijoules.items())),
        }
