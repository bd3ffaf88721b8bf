"""The receipt outbox: every signed receipt is appended before it is sent.

Append-only JSONL files in the agent's data dir. Receipts (one signed envelope per
line) go to `receipts/YYYY-MM-DD.jsonl`, one file per UTC day of the append; an older
agent's single `receipts.jsonl`, if present, is read as the oldest file and never
written again. `receipts-sent.jsonl` holds one job id per line, once the market
gave a final answer about it (`provider_agent.receipt_sync`): a single file, because a
receipt may be answered on a later day than it was issued and `unsent()` needs every
answered id anyway. `receipts-unpaid.jsonl` keeps, for the provider's own record, each
answer that said the receipt will not be paid (`{"job_id", "state", "detail"}` per line).

A whole line that does not parse as a signed receipt (the disk or a hand edit changed it)
cannot be asked about. `unsent()` sets it aside the first time it meets it: it is listed in
`receipts-unpaid.jsonl` as `unreadable` (with its job id when one can still be read) and
marked answered, so it neither stops the receipt sync nor keeps its day from being sealed.
A torn last line of `receipts-sent.jsonl` or `receipts-unpaid.jsonl` (the agent was killed
mid-write) is ended before the next append, and an id line that does not parse is ignored:
at worst a receipt is asked about once more.

A past day's file whose every receipt was answered is sealed (`seal_answered`): an empty
`<file>.answered` beside it, after which the scans for unanswered receipts skip the file,
and its ids leave `receipts-sent.jsonl`, so neither the scan nor the set of answered ids
grows with the agent's age. Today's file is never sealed (receipts are still appended to
it); a receipt appended to a sealed day (the clock went back) unseals it. With
`run.retention_days` set, the sealed day files (and their markers) more than that many days
before today are deleted (`remove_sealed`, after each receipt sync); an unsealed day and the
legacy file are never deleted. Without it nothing is deleted here; an operator may remove the
day files of epochs the market has settled.

Today's file stays open for appends (`O_APPEND`, one `write` per receipt): opening and
closing it for each receipt cost four times as much. It is reopened when the UTC day
changes, and when it was removed while open (an append to a removed file would be lost).
A write or flush that fails (a full disk, after part of the line) cuts the file back to the
size it had before (`append_whole`), so that a failed receipt leaves no torn line behind;
the size comes from the `fstat` each append makes anyway (was the file removed?), so a
receipt still costs one `fstat` and one `write`. If even the cut fails, the torn line is
ended when the file is next opened (`end_torn_line`).

The disk must also keep `min_free_bytes` free (the agent's `data_dir_min_free_mib`, 64 MiB by
default): with less, `writable()` is false and says why (`error`), so new jobs are refused
before they reach the engine, instead of a receipt failing once the GPU work is done (a disk
with a few bytes left passes a one-byte write). The free space is read (`free_bytes`, a
`statvfs` of the data dir: the bytes an unprivileged process may still use) at most once every
`space_check_s`, so a job costs a clock read; it is read again on the next check, so the
agent takes jobs once space comes back.

The readers stream the files, oldest first, one line at a time, so a large outbox is
never held in memory; `unsent()` lists receipts not yet acknowledged, so none is lost
if the connection to the market drops before the receipt reaches it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from protocol.errors import MalformedMessageError
from protocol.messages import Receipt, Signed, parse_signed
from provider_agent import retention
from provider_agent.appending import (
    append_durably,
    append_whole,
    end_torn_line,
    replace_durably,
)
from provider_agent.retention import DAY_S

log = logging.getLogger(__name__)

_COMPLETE = (b"}\n", b"}")
"""How a whole line ends; anything else is the torn tail of an interrupted append."""
_JOB_ID = re.compile(rb'"job_id":"([0-9a-f]{32})"')
"""A stored envelope's job id: the first `job_id` key of the line, which `model_dump_json`
writes before any free text (a quote inside a string is escaped, so none can match there)."""
_LINE_ID = "line-"
"""The prefix of the id given to a line whose job id cannot be read (never a job id's)."""
MIB = 1024 * 1024
SPACE_CHECK_S = 1.0
"""How long a reading of the disk's free space is kept before it is read again."""


def free_bytes(path: Path) -> int:
    """The bytes an unprivileged process may still write on the file system of `path`."""
    return shutil.disk_usage(path).free


class ReceiptOutbox:
    """Append-only store of signed receipts and of which ones the market has."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: bool = False,
        clock: Callable[[], float] = time.time,
        min_free_bytes: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create `data_dir` if needed; `fsync` makes each append durable across power loss.

        `clock` gives unix seconds, whose UTC day picks the day file (a test can move it).
        `writable()` is false while the disk has less than `min_free_bytes` free (0: no
        check), as `free_bytes` reads it (a test can replace it) at most once every
        `space_check_s` of `monotonic`.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes
        self.free_bytes: Callable[[Path], int] = free_bytes
        self.space_check_s = SPACE_CHECK_S
        self._monotonic = monotonic
        self._space_checked_at: float | None = None
        self.space_error: str | None = None
        """Why the disk has too little free space, as of the last reading."""
        self.legacy_path = data_dir / "receipts.jsonl"
        self.days_dir = data_dir / "receipts"
        self.sent_path = data_dir / "receipts-sent.jsonl"
        self.unpaid_path = data_dir / "receipts-unpaid.jsonl"
        self._fsync = fsync
        self._clock = clock
        self._day: float | None = None
        self._day_path = self.days_dir
        self._day_marker = self.days_dir
        self._day_fd: int | None = None
        self.write_error: str | None = None
        """Why the last receipt could not be stored (a full disk), until one is again."""

    def _append(self, path: Path, lines: list[str]) -> None:
        """Append whole lines to `path` in one write, after ending a torn last line; all of
        them or none (`append_durably`)."""
        if lines:
            data = "".join(line + "\n" for line in lines).encode()
            append_durably(path, data, fsync=self._fsync)

    def _day_file(self) -> tuple[int, int]:
        """The open descriptor of today's file and the file's size: (re)opened when the day
        changed, when the file was removed since it was opened (its link count is then 0),
        or after a failed write, each time after ending a torn last line."""
        path, fd = self._current_path(), self._day_fd
        if fd is not None:
            stat = os.fstat(fd)
            if stat.st_nlink > 0:
                return fd, stat.st_size
            self.close()
        end_torn_line(path)
        fd = self._day_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        return fd, os.fstat(fd).st_size

    def close(self) -> None:
        """Close today's file (the next `add` opens it again)."""
        if self._day_fd is not None:
            os.close(self._day_fd)
            self._day_fd = None

    def _path_of(self, day: float) -> Path:
        """The file of the UTC day `day` (unix seconds // `DAY_S`); creates nothing."""
        name = datetime.fromtimestamp(day * DAY_S, UTC).date().isoformat()
        return self.days_dir / f"{name}.jsonl"

    def _current_path(self) -> Path:
        """The day file for now; the name and path are only recomputed when the day changes."""
        day = self._clock() // DAY_S
        if day != self._day:
            self.days_dir.mkdir(exist_ok=True)
            self._day_path = self._path_of(day)
            self._day = day
            self.close()
            self._day_marker = _answered_marker(self._day_path)
        return self._day_path

    def add(self, envelope: Signed[Receipt]) -> None:
        """Store a signed receipt (before it is sent) in today's file; `OSError` (and
        `write_error` set) when it cannot be written."""
        self._write(envelope.model_dump_json().encode("utf-8") + b"\n")
        # A day sealed by a sync (another instance, as a rule) gets a receipt only if the
        # clock went back; the line is written first, so a seal made meanwhile is undone too.
        self._day_marker.unlink(missing_ok=True)

    def _write(self, data: bytes, *, keep: bool = True) -> None:
        """Append `data` to today's file, all of it or none (`append_whole`), and cut it off
        again unless `keep`; on failure the file is closed (the next write opens the path
        again) and `write_error` says why."""
        try:
            fd, size = self._day_file()
            append_whole(fd, data, size, fsync=self._fsync)
            if not keep:
                os.ftruncate(fd, size)
        except OSError as exc:
            self.close()
            self.write_error = f"{self._day_path}: {exc}"
            raise
        self.write_error = None

    @property
    def error(self) -> str | None:
        """Why receipts cannot be stored: the last write failed, or the disk is short of
        space; `None` when they can."""
        return self.write_error or self.space_error

    def check_space(self) -> str | None:
        """`space_error`, the disk's free space read again if the last reading is older than
        `space_check_s` (a reading that fails is no verdict: the writes then tell)."""
        if self.min_free_bytes <= 0:
            return None
        now = self._monotonic()
        checked = self._space_checked_at
        if checked is not None and now - checked < self.space_check_s:
            return self.space_error
        self._space_checked_at = now
        try:
            free = self.free_bytes(self.data_dir)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.data_dir, exc)
            free = self.min_free_bytes
        if free >= self.min_free_bytes:
            if self.space_error is not None:
                log.info("%s has free space again: receipts can be stored", self.data_dir)
            self.space_error = None
        else:
            if self.space_error is None:
                log.error("%s: disk almost full, new jobs are refused", self.data_dir)
            self.space_error = (
                f"{self.data_dir}: {free} bytes free on its disk, less than the"
                f" {self.min_free_bytes / MIB:g} MiB kept free (data_dir_min_free_mib)"
            )
        return self.space_error

    def writable(self) -> bool:
        """Whether receipts can be stored: the disk has `min_free_bytes` free
        (`check_space`), and after a failed write, an end of line can be appended to today's
        file (and is cut off again, so the file keeps only receipts)."""
        if self.check_space() is not None:
            return False
        if self.write_error is None:
            return True
        try:
            self._write(b"\n", keep=False)
        except OSError:
            return False
        return True

    def mark_sent(self, job_ids: list[str]) -> None:
        """Record that the market acknowledged these jobs' receipts."""
        self._append(self.sent_path, [json.dumps(job_id) for job_id in job_ids])

    def record_unpaid(self, answers: list[dict[str, str | None]]) -> None:
        """Keep the market's answers that said these receipts will not be paid."""
        self._append(self.unpaid_path, [json.dumps(a, sort_keys=True) for a in answers])

    def _sent(self) -> set[str]:
        if not self.sent_path.exists():
            return set()
        with self.sent_path.open("rb") as lines:
            return {job_id for line in lines if (job_id := _sent_id(line)) is not None}

    def paths(self) -> list[Path]:
        """The receipt files, oldest first: the legacy file, then the day files by date."""
        legacy = [self.legacy_path] if self.legacy_path.exists() else []
        return legacy + sorted(self.days_dir.glob("????-??-??.jsonl"))

    def _lines(self, paths: list[Path] | None = None) -> Iterator[bytes]:
        """Every whole receipt line of `paths` (default: every file), oldest first (each
        file's torn last line is skipped)."""
        for path in self.paths() if paths is None else paths:
            try:
                with path.open("rb") as lines:
                    for line in lines:
                        if line.endswith(_COMPLETE):
                            yield line
            except FileNotFoundError:  # removed by the operator since it was listed
                continue

    def all(self) -> Iterator[Signed[Receipt]]:
        """Every stored receipt, oldest first, parsed one line at a time."""
        for line in self._lines():
            yield parse_signed(line, Receipt)

    def _unsealed(self) -> list[Path]:
        return [path for path in self.paths() if not _answered_marker(path).exists()]

    def _unsent_lines(self) -> Iterator[bytes]:
        """The lines of receipts not yet answered; only each line's job id is read."""
        sent = self._sent()
        for line in self._lines(self._unsealed()):
            if not sent or _job_id(line) not in sent:
                yield line

    def seal_answered(self) -> list[Path]:
        """Seal each past file whose receipts were all answered, and drop their ids from
        `receipts-sent.jsonl`; the files sealed."""
        # today's path only: the appender (another instance, as a rule) owns the file
        sent, today = self._sent(), self._path_of(self._clock() // DAY_S)
        sealed, ids = [], set()
        for path in self._unsealed():
            if path == today:
                continue
            in_file = {_job_id(line) for line in self._lines([path])}
            if in_file <= sent:
                _answered_marker(path).touch()
                sealed.append(path)
                ids |= in_file
        if ids:
            kept = "".join(json.dumps(job_id) + "\n" for job_id in sent - ids)
            replace_durably(self.sent_path, kept.encode(), fsync=self._fsync)
        return sealed

    def remove_sealed(self, retention_days: int) -> list[Path]:
        """Delete the sealed day files whose UTC day is more than `retention_days` before
        today's, then their markers; the files deleted. A marker outlives its file only when
        the file could not be deleted (it is kept sealed) or the agent stopped in between."""
        oldest = retention.oldest_kept(self._clock(), retention_days)
        markers = [
            marker
            for marker in sorted(self.days_dir.glob("????-??-??.jsonl.answered"))
            if (day := retention.day_of(marker.name)) is not None and day < oldest
        ]
        removed = retention.remove([m.with_suffix("") for m in markers], "sealed receipt days")
        for marker in markers:
            if not marker.with_suffix("").exists():
                marker.unlink(missing_ok=True)
        return removed

    def unsent(self) -> Iterator[Signed[Receipt]]:
        """Stored receipts the market has not answered for, oldest first; a line that does not
        parse is set aside instead (listed as `unreadable` among the unpaid, marked answered)."""
        for line in self._unsent_lines():
            try:
                envelope = parse_signed(line, Receipt)
            except MalformedMessageError as exc:
                self._set_aside(line, exc)
                continue
            yield envelope

    def _set_aside(self, line: bytes, exc: MalformedMessageError) -> None:
        line_id = _job_id(line)
        job_id = None if line_id.startswith(_LINE_ID) else line_id
        error = str(exc).splitlines()[0]
        detail = f"the outbox's copy does not parse, so the market was not asked: {error}"
        log.warning("receipt %s set aside: %s", line_id, detail)
        self.record_unpaid([{"job_id": job_id, "state": "unreadable", "detail": detail}])
        self.mark_sent([line_id])

    def count_unsent(self) -> int:
        """How many receipts `unsent()` would yield, without building the envelopes (a line
        that does not parse counts until `unsent()` sets it aside)."""
        return sum(1 for _ in self._unsent_lines())


def _answered_marker(path: Path) -> Path:
    return path.with_name(path.name + ".answered")


def _job_id(line: bytes) -> str:
    """The line's job id, or for a line with none that can be read, an id made of its digest
    (`line-<sha256>`), which no job id can equal."""
    found = _JOB_ID.search(line)
    if found is not None:
        return found.group(1).decode("ascii")
    try:
        return str(json.loads(line)["message"]["job_id"])
    except (ValueError, TypeError, KeyError):
        return _LINE_ID + hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _sent_id(line: bytes) -> str | None:
    """The job id of a `receipts-sent.jsonl` line; None for a blank or unreadable one."""
    try:
        job_id = json.loads(line) if line.strip() else None
    except ValueError:
        return None
    return job_id if isinstance(job_id, str) else None
