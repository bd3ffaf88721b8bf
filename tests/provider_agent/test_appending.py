"""The agent's file writes (`provider_agent.appending`): whole lines or none, whole files or
the old ones."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from provider_agent.appending import append_durably, replace_durably


def _full_disk(fd: int, data: bytes) -> None:
    """Stores half of `data`, then fails as a full disk does."""
    os.write(fd, data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_replace_durably_flushes_the_file_and_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sent.jsonl"
    path.write_bytes(b"old\n")
    flushed: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        flushed.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    replace_durably(path, b"new\n")
    assert path.read_bytes() == b"new\n"
    assert len(flushed) == 2  # the staged file, then the folder that holds the rename
    assert list(tmp_path.iterdir()) == [path]
    replace_durably(path, b"newer\n", fsync=False)
    assert path.read_bytes() == b"newer\n"
    assert len(flushed) == 2


def test_replace_durably_that_fails_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "calibration.json"
    path.write_bytes(b'{"old": true}\n')
    opened = Path.open

    def full_disk(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = opened(self, mode, *args, **kwargs)
        if "w" in mode:
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return handle

    monkeypatch.setattr(Path, "open", full_disk)
    with pytest.raises(OSError, match="No space left"):
        replace_durably(path, b'{"new": true}\n')
    assert path.read_bytes() == b'{"old": true}\n'


def test_append_durably_ends_a_torn_line_and_keeps_all_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"one\ntor")
    append_durably(path, b"two\n", fsync=False)
    assert path.read_bytes() == b"one\ntor\ntwo\n"
    monkeypatch.setattr("provider_agent.appending.write_all", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        append_durably(path, b"three\n", fsync=False)
    assert path.read_bytes() == b"one\ntor\ntwo\n"
