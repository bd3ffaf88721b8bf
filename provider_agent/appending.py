"""Appending lines to the agent's logs (the receipt outbox, the attestation log)."""

from __future__ import annotations

import os
from pathlib import Path


def end_torn_line(path: Path) -> None:
    """Ends the torn last line an interrupted append left in `path` (agent killed or disk
    full mid-write), so that the next line starts on its own and only the torn one is
    skipped when the file is read."""
    try:
        with path.open("rb+") as out:
            out.seek(-1, os.SEEK_END)
            if out.read(1) != b"\n":
                out.write(b"\n")
    except OSError:  # no file yet, or an empty one
        return
