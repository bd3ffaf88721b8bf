"""The receipt outbox: every signed receipt is appended before it is sent.

Two append-only JSONL files in the agent's data dir: `receipts.jsonl` (one signed
envelope per line) and `receipts-sent.jsonl` (one job id per line, once the market
acknowledged it). `unsent()` lists receipts not yet acknowledged, so none is lost if
the connection to the market drops before the receipt reaches it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from protocol.messages import Receipt, Signed, parse_signed


class ReceiptOutbox:
    """Append-only store of signed receipts and of which ones the market has."""

    def __init__(self, data_dir: Path, *, fsync: bool = False) -> None:
        """Create `data_dir` if needed; `fsync` makes each append durable across power loss."""
        data_dir.mkdir(parents=True, exist_ok=True)
        self.receipts_path = data_dir / "receipts.jsonl"
        self.sent_path = data_dir / "receipts-sent.jsonl"
        self._fsync = fsync

    def _append(self, path: Path, line: str) -> None:
        with path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            if self._fsync:
                os.fsync(out.fileno())

    def add(self, envelope: Signed[Receipt]) -> None:
        """Store a signed receipt (before it is sent)."""
        self._append(self.receipts_path, envelope.model_dump_json())

    def mark_sent(self, job_ids: list[str]) -> None:
        """Record that the market acknowledged these jobs' receipts."""
        for job_id in job_ids:
            self._append(self.sent_path, json.dumps(job_id))

    def _sent(self) -> set[str]:
        if not self.sent_path.exists():
            return set()
        lines = self.sent_path.read_text(encoding="utf-8").splitlines()
        return {json.loads(line) for line in lines if line.strip()}

    def all(self) -> list[Signed[Receipt]]:
        """Every stored receipt, oldest first (a torn last line is skipped)."""
        if not self.receipts_path.exists():
            return []
        result: list[Signed[Receipt]] = []
        for line in self.receipts_path.read_text(encoding="utf-8").splitlines():
            if line.endswith("}"):
                result.append(parse_signed(line, Receipt))
        return result

    def unsent(self) -> list[Signed[Receipt]]:
        """Stored receipts the market has not acknowledged, oldest first."""
        sent = self._sent()
        return [envelope for envelope in self.all() if envelope.message.job_id not in sent]
