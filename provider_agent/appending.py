"""Writing the agent's logs (the receipt outbox, the attestation log): appending lines, all
of them or none, and replacing a whole file so that a crash at any point leaves the old or
the new one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """`os.write` until every byte is written (a regular file takes all at once, as a rule)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def end_torn_line(path: Path) -> None:
    """Ends the torn last line an interrupted append left in `path` (agent killed mid-write),
    so that the next line starts on its own and only the torn one is skipped when the file
    is read. `OSError` when that end cannot be written (a full disk)."""
    try:
        out = path.open("rb+")
    except FileNotFoundError:
        return
    with out:
        if out.seek(0, os.SEEK_END) > 0:
            out.seek(-1, os.SEEK_END)
            if out.read(1) != b"\n":
                out.write(b"\n")


def append_durably(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Append `data` (whole lines) to `path` after ending a torn last line, flushed to disk
    (`fsync`). When a write or the flush fails (a full disk) the file is cut back to what it
    held, so that it holds all of `data` or none of it, and the `OSError` is raised."""
    end_torn_line(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        append_whole(fd, data, os.fstat(fd).st_size, fsync=fsync)
    finally:
        os.close(fd)


def append_whole(fd: int, data: bytes, size: int, *, fsync: bool = True) -> None:
    """Append `data` over `fd` (opened `O_APPEND`, its file `size` bytes long), flushed to
    disk (`fsync`). When a write or the flush fails (a full disk) the file is cut back to
    `size`, so that it holds all of `data` or none of it, and the `OSError` is raised (if
    even the cut fails, a torn line is left: `end_torn_line` ends it before the next)."""
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


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
