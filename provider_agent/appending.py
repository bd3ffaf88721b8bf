"""Writing the agent's logs (the receipt outbox, the attestation log): appending a line,
and replacing a whole file so that a crash at any point leaves the old or the new one."""

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


def replace_durably(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Make `data` the contents of `path`: written to `<path>.tmp`, flushed to disk, renamed
    over `path`, and the rename flushed too (`fsync`), so that a crash leaves either the old
    file or the new one whole (at worst a stale `.tmp` beside it, overwritten next time)."""
    staged = path.with_name(path.name + ".tmp")
    with staged.open("wb") as out:
        out.write(data)
        out.flush()
        if fsync:
            os.fsync(out.fileno())
    os.replace(staged, path)
    if fsync:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
