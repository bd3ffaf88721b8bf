"""Attestations: one signed window of energy and token counters every few seconds.

Each window reads the energy meter and vLLM's `/metrics` at both ends (the end of one
window is the start of the next), samples the running and waiting requests in between,
and becomes a protocol `Attestation` chained by `seq` and `prev_hash`. Every signed
attestation is appended to `<data_dir>/attestations.jsonl` before it is sent, and its
seq to `attestations-sent.jsonl` once the market has it; the chain's head is the last
line of the first file, so a restarted agent continues the chain. An attestation the market
did not take is retried with backoff, unless the market refused it for good
(`PERMANENT_REFUSALS`): then the unsent ones are set aside and the chain goes on from the
market's head (`AttestationLog.resume_from`).

The chain file holds what is still needed: the unsent attestations and the chain's head. Once
`archive_after` acknowledged ones precede the head (`AttestationLog.archive_sent`), they are
moved, in one gzip file named by the UTC day and seq of the first, to
`<data_dir>/attestations-archive/`, and their seqs leave the sent file; so neither file grows
with the agent's age, and a start reads only what it needs. Each step writes a new file,
flushes it and renames it over the old (`replace_durably`): the archive first, then the chain
file, then the sent file, so a crash between any two loses nothing (an archived attestation
stays in the chain file, still marked sent, until the next archiving rewrites the same archive
file and drops it) and sends nothing twice. With `run.retention_days` set, each archiving then
deletes the archive files whose last attestation's UTC day is more than that many days before
today's (`AttestationLog.remove_archived`). Without it nothing is deleted; an operator may
remove archive files the market has settled.

A window whose token counters cannot be read, or went backwards (vLLM restarted), is
not attested: the next window starts from the next good reading. A window whose energy
is invalid (counter reset, GPU set changed), or whose meter read failed at either end
(`EnergyMeterError`, e.g. a GPU lost), is attested as `unmeasured` with the reason. An
attestation that cannot be written to the log (disk full) is not sent: the window goes
on and the next attempt, one window later, covers both. A write that fails leaves each log
file as it was (`append_durably`); an acknowledgement that cannot be recorded leaves the
attestation queued (the market takes it again as a repeat), so a full disk stops neither
loop.
An estimated meter has no GPU counters, so its windows carry one `declared-power` entry
whose counter is the running sum of the estimated energy over the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from nacl.signing import SigningKey

from protocol.errors import MalformedMessageError
from protocol.messages import (
    ZERO_HASH,
    Attestation,
    Domain,
    GpuReading,
    Signed,
    TokenCounters,
    message_digest,
    parse_signed,
    sign,
)
from provider_agent import retention
from provider_agent.appending import append_durably, replace_durably
from provider_agent.energy import (
    Clock,
    EnergyMeter,
    EnergyMeterError,
    EnergyReading,
    WindowEnergy,
    system_clock,
    window_energy,
)
from provider_agent.engine.errors import EngineError
from provider_agent.engine.metrics import EngineCounters
from provider_agent.market_client import MarketError

log = logging.getLogger(__name__)

DECLARED_GPU_UUID = "declared-power"
MAX_TEXT = 256
CountersFetch = Callable[[], Awaitable[EngineCounters]]
ARCHIVE_AFTER = 1000
"""Acknowledged attestations the chain file holds before they are moved to the archive."""
PERMANENT_REFUSALS = frozenset({400, 401, 403, 409})
"""The market's answers that sending again cannot change: a malformed envelope, a signature
by a key it no longer trusts (after `rotate-key`), a wrong domain, a broken chain (a fork
after the data dir was lost). Any other failure (404 before the provider is registered, 422
for a window ahead of the market's clock, 429, 5xx, no answer) is retried with backoff."""


class AttestationMarket(Protocol):
    """Where attestations go (`MarketClient`): `MarketError` on failure, with the status."""

    async def post_attestation(self, envelope: Signed[Attestation]) -> object:
        """Post one signed attestation."""
        ...

    async def latest_attestation(self) -> dict[str, Any] | None:
        """The market's last stored attestation of this provider (`seq`, `digest`,
        `window_end_ms`), or `None` when it holds none."""
        ...


def _text(value: str | None) -> str | None:
    if not value:
        return None
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 3] + "..."


@dataclass(frozen=True)
class ChainHead:
    """What the next attestation follows: its seq, digest and window end (unix ms), and the
    end of its declared-power counter (estimated meter; `None` when unknown)."""

    seq: int
    digest: str
    window_end: int
    declared_energy_mj: int | None = None

    @classmethod
    def of(cls, envelope: Signed[Attestation]) -> ChainHead:
        """The head an attestation makes."""
        message = envelope.message
        declared = [gpu.energy_mj_end for gpu in message.gpus if gpu.uuid == DECLARED_GPU_UUID]
        return cls(
            seq=message.seq,
            digest=message_digest(message),
            window_end=message.window_end,
            declared_energy_mj=declared[0] if declared else None,
        )


class AttestationLog:
    """Append-only store of signed attestations and of which seqs the market has.

    When the market refuses the queue for good, `resume_from` sets the unsent attestations
    aside and starts a new chain file that follows the market's head (`anchor`). Acknowledged
    attestations leave the chain file for the archive (`archive_sent`).
    """

    def __init__(self, data_dir: Path, *, fsync: bool = True) -> None:
        """Load what `data_dir` holds (a torn last line, from a crash mid-write, is cut off)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.path = data_dir / "attestations.jsonl"
        self.sent_path = data_dir / "attestations-sent.jsonl"
        self.refused_path = data_dir / "attestations-refused.jsonl"
        self.anchor_path = data_dir / "attestations-anchor.json"
        self._fsync = fsync
        self.unreadable_path = data_dir / "attestations-unreadable.jsonl"
        self.archive_dir = data_dir / "attestations-archive"
        self._all = self._read_chain()
        self._sent = {int(line) for line in self._lines(self.sent_path) if line.strip().isdigit()}
        self.anchor = self._read_anchor()

    def _read_chain(self) -> list[Signed[Attestation]]:
        """The chain file's attestations; a line that does not parse (the disk or a hand edit
        changed it) is moved to `attestations-unreadable.jsonl` instead of stopping the agent.
        The market then refuses what followed it, and `resume_from` takes over."""
        chain, unreadable = [], []
        for line in self._lines(self.path):
            try:
                chain.append(parse_signed(line, Attestation))
            except MalformedMessageError as exc:
                log.warning("attestation log line set aside, it does not parse: %s", exc)
                unreadable.append(line)
        if unreadable:
            for line in unreadable:
                self._append(self.unreadable_path, line)
            self._replace(self.path, _jsonl(chain))
        return chain

    def _read_anchor(self) -> ChainHead | None:
        if not self.anchor_path.exists():
            return None
        return ChainHead(**json.loads(self.anchor_path.read_text()))

    def head(self) -> ChainHead | None:
        """What the next attestation follows: the last stored one, else the market's head
        the chain resumed from, else nothing (the next is seq 0)."""
        last = self.last()
        return ChainHead.of(last) if last is not None else self.anchor

    def resume_from(self, head: ChainHead | None, status: int, reason: str) -> int:
        """Set every unsent attestation aside (listed in `attestations-refused.jsonl` with
        the market's `status` and `reason`, kept in the archived chain file) and start a new
        chain file that follows `head`, the market's (None: the market holds none); how many
        were set aside.

        On `OSError` (a full disk) the chain is as it was, to be resumed again: the refused
        ones are listed in one append (all or none), and one listed by an earlier try that
        failed later on (the anchor) is not listed twice."""
        refused = self.unsent()
        listed = self._refused_listed()
        records = []
        for envelope in refused:
            record = {"seq": envelope.message.seq, "digest": message_digest(envelope.message)}
            if (record["seq"], record["digest"]) not in listed:
                records.append(json.dumps({**record, "status": status, "reason": reason}) + "\n")
        if records:
            append_durably(self.refused_path, "".join(records).encode(), fsync=self._fsync)
        self._write_anchor(head)
        stamp = time.time_ns() // 1_000_000
        for path in (self.path, self.sent_path):
            if path.exists():
                path.rename(path.with_name(f"{path.stem}-until-{stamp}{path.suffix}"))
        self._all, self._sent, self.anchor = [], set(), head
        return len(refused)

    def _refused_listed(self) -> set[tuple[object, object]]:
        """The (seq, digest) of every attestation `attestations-refused.jsonl` lists."""
        listed = set()
        for line in self._lines(self.refused_path):
            with contextlib.suppress(ValueError, TypeError, KeyError):
                record = json.loads(line)
                listed.add((record["seq"], record["digest"]))
        return listed

    def _write_anchor(self, head: ChainHead | None) -> None:
        """Keep `head` as the anchor, whole or not at all (`replace_durably`)."""
        if head is None:
            self.anchor_path.unlink(missing_ok=True)
            return
        self._replace(self.anchor_path, json.dumps(asdict(head)).encode())

    @staticmethod
    def _lines(path: Path) -> list[str]:
        if not path.exists():
            return []
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # torn write: cut the fragment off in place
            data = data[: data.rfind(b"\n") + 1]
            os.truncate(path, len(data))
        # JSON lines end in "\n" only: `str.splitlines` would also cut a line at a U+2028 or
        # U+0085 that a text field (a GPU's name, say) holds, as JSON writes them raw
        text = data.decode("utf-8", "replace")
        return [line for line in text.split("\n") if line.strip()]

    def _append(self, path: Path, line: str) -> None:
        """`line` at the end of `path`; on `OSError` (a full disk) `path` is as it was."""
        append_durably(path, (line + "\n").encode(), fsync=self._fsync)

    def last(self) -> Signed[Attestation] | None:
        """The head of the chain, if any."""
        return self._all[-1] if self._all else None

    def append(self, envelope: Signed[Attestation]) -> None:
        """Store a signed attestation (before it is sent); it must extend the chain."""
        head = self.head()
        expected = 0 if head is None else head.seq + 1
        if envelope.message.seq != expected:
            raise ValueError(f"attestation seq {envelope.message.seq} != expected {expected}")
        self._append(self.path, envelope.model_dump_json())
        self._all.append(envelope)

    def mark_sent(self, seq: int) -> None:
        """Record that the market has attestation `seq`."""
        if seq not in self._sent:
            self._append(self.sent_path, str(seq))
            self._sent.add(seq)

    def all(self) -> list[Signed[Attestation]]:
        """Every attestation of the chain file (not archived), in chain order."""
        return list(self._all)

    def _replace(self, path: Path, data: bytes) -> None:
        """One step of archiving: `path` now holds `data`, or (on a crash) still the old."""
        replace_durably(path, data, fsync=self._fsync)

    def archive_sent(self, at_least: int = 1) -> int:
        """Move the acknowledged attestations at the start of the chain file, all but the
        chain's head, to a gzip file of `archive_dir`, once there are `at_least`; how many.

        The archive file is named by the UTC day of the first one's window end, its seq and
        its digest, so that archiving again after a crash (the chain file then still starts
        with the same attestation) rewrites the same file, with no copy left behind.
        """
        count = 0
        for envelope in self._all[:-1]:
            if envelope.message.seq not in self._sent:
                break
            count += 1
        if count == 0 or count < at_least:
            return 0
        moved, kept = self._all[:count], self._all[count:]
        first = moved[0].message
        day = datetime.fromtimestamp(first.window_end / 1000, UTC).date().isoformat()
        name = f"{day}-seq-{first.seq:012d}-{message_digest(first)[2:14]}.jsonl.gz"
        self.archive_dir.mkdir(exist_ok=True)
        self._replace(self.archive_dir / name, gzip.compress(_jsonl(moved), mtime=0))
        self._replace(self.path, _jsonl(kept))
        sent = self._sent & {envelope.message.seq for envelope in kept}
        self._replace(self.sent_path, "".join(f"{seq}\n" for seq in sorted(sent)).encode())
        self._all, self._sent = kept, sent
        log.info("%d acknowledged attestations archived in %s", count, self.archive_dir / name)
        return count

    def archive_paths(self) -> list[Path]:
        """The archive files, by name (UTC day, then seq)."""
        return sorted(self.archive_dir.glob("*.jsonl.gz"))

    def remove_archived(self, oldest_kept: int) -> list[Path]:
        """Delete the archive files whose every attestation's window ended before the UTC day
        `oldest_kept` (days since the epoch); the files deleted. The name gives the first one's
        day, so only files named before that day are opened to read the last one's (a file
        spans days when the market took a backlog at once); one that cannot be read is kept."""
        old = [
            path
            for path in self.archive_paths()
            if (day := retention.day_of(path.name)) is not None
            and day < oldest_kept
            and (last := _last_window_end(path)) is not None
            and last // 1000 // retention.DAY_S < oldest_kept
        ]
        return retention.remove(old, "attestation archive files")

    def archived(self) -> Iterator[Signed[Attestation]]:
        """Every archived attestation, file by file (`archive_paths`)."""
        for path in self.archive_paths():
            with gzip.open(path, "rt", encoding="utf-8") as lines:
                for line in lines:
                    if line.strip():
                        yield parse_signed(line, Attestation)

    def unsent(self) -> list[Signed[Attestation]]:
        """Stored attestations the market has not acknowledged, in chain order."""
        return [env for env in self._all if env.message.seq not in self._sent]


def _jsonl(envelopes: list[Signed[Attestation]]) -> bytes:
    return "".join(envelope.model_dump_json() + "\n" for envelope in envelopes).encode()


def _last_window_end(path: Path) -> int | None:
    """The window end (unix ms) of an archive file's last attestation; `None` when the file
    cannot be read."""
    last = None
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    last = line
        return None if last is None else int(json.loads(last)["message"]["window_end"])
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        log.warning("archive file %s kept, it cannot be read: %s", path, exc)
        return None


@dataclass
class _Window:
    reading: EnergyReading
    counters: EngineCounters
    running: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)

    def sample(self, counters: EngineCounters) -> None:
        self.running.append(counters.requests_running)
        self.waiting.append(counters.requests_waiting)


def _avg_milli(values: list[int]) -> int:
    return (sum(values) * 1000 + len(values) // 2) // len(values) if values else 0


class AttestationBuilder:
    """Turns two readings into the next signed attestation of the chain."""

    def __init__(
        self,
        *,
        provider: str,
        domain: Domain,
        signing_key: SigningKey,
        log_store: AttestationLog,
        driver_version: str | None = None,
        declared_gpu_name: str | None = None,
    ) -> None:
        """`log_store` holds the chain; the next attestation follows its head."""
        self.provider = provider
        self.domain = domain
        self.signing_key = signing_key
        self.store = log_store
        self.driver_version = _text(driver_version)
        self.declared_gpu_name = declared_gpu_name or "declared"

    def _gpus(
        self, start: EnergyReading, end: EnergyReading, window: WindowEnergy
    ) -> list[GpuReading]:
        duration_ns = end.monotonic_ns - start.monotonic_ns
        if window.method == "estimated":
            head = self.store.head()
            base = 0 if head is None else head.declared_energy_mj or 0
            total = window.total_mj or 0
            return [
                GpuReading(
                    uuid=DECLARED_GPU_UUID,
                    name=self.declared_gpu_name,
                    energy_mj_start=base,
                    energy_mj_end=base + total,
                    power_limit_mw=None,
                    avg_power_mw=window.avg_power_mw,
                )
            ]
        before = {gpu.uuid: gpu for gpu in start.gpus}
        result = []
        for gpu in end.gpus:
            first = before.get(gpu.uuid)
            energy_start = None if first is None else first.energy_mj
            energy_end = gpu.energy_mj
            avg_power: int | None = None
            if window.total_mj is None or energy_start is None or energy_end is None:
                energy_start = energy_end = None
            elif duration_ns > 0:
                avg_power = ((energy_end - energy_start) * 10**9 + duration_ns // 2) // duration_ns
            result.append(
                GpuReading(
                    uuid=gpu.uuid,
                    name=gpu.name,
                    energy_mj_start=energy_start,
                    energy_mj_end=energy_end,
                    power_limit_mw=gpu.power_limit_mw,
                    avg_power_mw=avg_power,
                )
            )
        return result

    def build(
        self,
        start: EnergyReading,
        end: EnergyReading,
        tokens_start: EngineCounters,
        tokens_end: EngineCounters,
        running: list[int],
        waiting: list[int],
    ) -> Signed[Attestation] | None:
        """Sign and store the next attestation; `None` if the window cannot be attested."""
        head = self.store.head()
        window_start = start.unix_ms
        if head is not None:
            window_start = max(window_start, head.window_end)
        if end.unix_ms <= window_start:
            return None
        window = window_energy(start, end)
        method = window.method if window.total_mj is not None else "unmeasured"
        if start.method != end.method:  # the meter read failed at one end
            basis = end.reason if end.method == "unmeasured" else start.reason
        elif method == "unmeasured":
            basis = window.invalid_reason or end.reason or window.basis
        else:
            basis = window.basis
        gpus = self._gpus(start, end, window)
        if method == "measured" and not gpus:
            method, basis = "unmeasured", "no GPU in the reading"
        message = Attestation(
            provider=self.provider,
            seq=0 if head is None else head.seq + 1,
            prev_hash=ZERO_HASH if head is None else head.digest,
            window_start=window_start,
            window_end=end.unix_ms,
            gpus=tuple(gpus),
            driver_version=self.driver_version,
            energy_method=method,
            energy_basis=_text(basis),
            tokens=TokenCounters(
                prompt_tokens_start=tokens_start.prompt_tokens,
                prompt_tokens_end=tokens_end.prompt_tokens,
                generation_tokens_start=tokens_start.generation_tokens,
                generation_tokens_end=tokens_end.generation_tokens,
            ),
            avg_running_requests_milli=_avg_milli(running),
            avg_waiting_requests_milli=_avg_milli(waiting),
            domain=self.domain,
        )
        envelope = sign(message, self.signing_key)
        self.store.append(envelope)
        return envelope


def _went_backwards(start: EngineCounters, end: EngineCounters) -> bool:
    return (
        end.prompt_tokens < start.prompt_tokens or end.generation_tokens < start.generation_tokens
    )


class AttestationLoop:
    """Produces one attestation per window and posts the queue to the market."""

    def __init__(
        self,
        *,
        builder: AttestationBuilder,
        meter: EnergyMeter,
        counters: CountersFetch,
        market: AttestationMarket | None,
        window_s: float = 10.0,
        sample_s: float = 1.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        clock: Clock = system_clock,
        archive_after: int = ARCHIVE_AFTER,
        retention_days: int | None = None,
    ) -> None:
        """`market` takes the attestations; `None` only stores them. Once `archive_after`
        acknowledged ones are in the chain file, they are moved to the archive, and archive
        files more than `retention_days` old are deleted (`None`: none).

        `clock` stamps a reading the meter failed to take (the meter's own clock, as a rule).
        """
        self.builder = builder
        self.meter = meter
        self.counters = counters
        self.market = market
        self.window_s = window_s
        self.sample_s = min(sample_s, window_s)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.clock = clock
        self.archive_after = archive_after
        self.retention_days = retention_days
        self.produced = 0
        self.energy_mj: Counter[str] = Counter()
        """The energy of the windows attested since start, by method (none if unmeasured)."""
        self.send_failures = 0
        self.write_error: str | None = None
        self.set_aside = 0
        self.last_refusal: str | None = None
        self._wake = asyncio.Event()

    async def _energy(self) -> EnergyReading:
        """The meter's reading; a failed read is an unmeasured reading that says why."""
        try:
            return await asyncio.to_thread(self.meter.read)
        except EnergyMeterError as exc:
            log.warning("energy meter read failed: %s", exc)
            monotonic_ns, unix_ms = self.clock()
            reason = f"meter read failed ({exc.code}): {exc}"
            return EnergyReading("unmeasured", monotonic_ns, unix_ms, reason=reason)

    def _attest(self, window: _Window, reading: EnergyReading, counters: EngineCounters) -> bool:
        """Sign and store the window's attestation; `False` when the log cannot be written
        (the window then goes on, and the next attempt covers it)."""
        try:
            envelope = self.builder.build(
                window.reading, reading, window.counters, counters, window.running, window.waiting
            )
        except OSError as exc:
            self.write_error = f"{self.builder.store.path}: {exc}"
            log.error("attestation not stored (retried next window): %s", self.write_error)
            return False
        self.write_error = None
        if envelope is not None:
            self.produced += 1
            message = envelope.message
            if message.energy_mj is not None:
                self.energy_mj[message.energy_method] += message.energy_mj
            self._wake.set()
        return True

    async def _reading(self) -> tuple[EnergyReading, EngineCounters] | None:
        reading = await self._energy()
        try:
            counters = await self.counters()
        except EngineError as exc:
            log.warning("engine counters unavailable: %s", exc)
            return None
        return reading, counters

    async def produce(self) -> None:
        """Run windows back to back until cancelled."""
        loop = asyncio.get_running_loop()
        window: _Window | None = None
        while True:
            if window is None:
                first = await self._reading()
                if first is None:
                    await asyncio.sleep(self.sample_s)
                    continue
                window = _Window(*first)
                window.sample(first[1])
            deadline = loop.time() + self.window_s
            while (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(self.sample_s, left))
                if loop.time() < deadline:
                    with contextlib.suppress(EngineError):
                        window.sample(await self.counters())
            end = await self._reading()
            if end is None:
                window = None
                continue
            reading, counters = end
            window.sample(counters)
            if _went_backwards(window.counters, counters):
                log.warning("engine token counters went backwards (restart?): window not attested")
            elif not self._attest(window, reading, counters):
                continue
            window = _Window(reading, counters)
            window.sample(counters)

    async def send_pending(self) -> bool:
        """Post every unsent attestation in order; `False` at the first failure to retry.

        A permanent refusal (`PERMANENT_REFUSALS`) is not retried: the chain resumes from
        the market's head (`_resume_after`) and the queue is empty again.
        """
        if self.market is None:
            return True
        for envelope in self.builder.store.unsent():
            try:
                await self.market.post_attestation(envelope)
            except MarketError as exc:
                if exc.status in PERMANENT_REFUSALS:
                    return await self._resume_after(envelope, exc)
                return self._failed(envelope, exc)
            except Exception as exc:  # any other failure: keep it queued and retry later
                return self._failed(envelope, exc)
            if not self._mark_sent(envelope):
                return False
        self._archive()
        return True

    def _mark_sent(self, envelope: Signed[Attestation]) -> bool:
        """Record that the market has `envelope`; `False` when that cannot be written (a full
        disk): it stays queued, and the market takes it again as a repeat."""
        try:
            self.builder.store.mark_sent(envelope.message.seq)
        except OSError as exc:
            self.send_failures += 1
            log.warning(
                "attestation %d sent but not recorded (sent again): %s", envelope.message.seq, exc
            )
            return False
        return True

    def _archive(self) -> None:
        """Archive the acknowledged attestations if enough are, then apply the retention; a
        failure (a full disk) leaves them where they are, and the next send tries again."""
        try:
            archived = self.builder.store.archive_sent(self.archive_after)
        except OSError as exc:
            log.warning("acknowledged attestations not archived (tried again later): %s", exc)
            return
        if archived and self.retention_days is not None:
            now_s = self.clock()[1] / 1000
            oldest = retention.oldest_kept(now_s, self.retention_days)
            self.builder.store.remove_archived(oldest)

    def _failed(self, envelope: Signed[Attestation], exc: Exception) -> bool:
        self.send_failures += 1
        log.warning("attestation %d not sent (retried): %s", envelope.message.seq, exc)
        return False

    async def _resume_after(self, refused: Signed[Attestation], refusal: MarketError) -> bool:
        """Set the unsent attestations aside and follow the market's head from now on; the
        refused one is retried if the market's head cannot be read."""
        assert self.market is not None
        assert refusal.status is not None
        try:
            summary = await self.market.latest_attestation()
            head = _market_head(summary)
        except (MarketError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "the market refused attestation %d and its head cannot be read: %s",
                refused.message.seq,
                exc,
            )
            return self._failed(refused, refusal)
        store = self.builder.store
        try:
            count = store.resume_from(head, refusal.status, str(refusal))
        except OSError as exc:  # a full disk: the refused one is sent again, and refused again
            log.error("the chain cannot resume from the market's head: %s", exc)
            return self._failed(refused, refusal)
        self.set_aside += count
        follows = (
            "seq 0 (the market holds none)" if head is None else f"the market's seq {head.seq}"
        )
        self.last_refusal = (
            f"the market refused attestation {refused.message.seq} for good ({refusal}); "
            f"{count} unsent attestations set aside (listed in {store.refused_path}), the chain "
            f"goes on from {follows}"
        )
        log.error("%s", self.last_refusal)
        return True

    async def deliver(self) -> None:
        """Send queued attestations as they appear, retrying with backoff, until cancelled."""
        delay = self.retry_initial_s
        while True:
            self._wake.clear()
            if await self.send_pending():
                delay = self.retry_initial_s
                await self._wake.wait()
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    async def run(self) -> None:
        """Produce and deliver until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.produce())
            group.create_task(self.deliver())

    async def flush(self, timeout_s: float) -> bool:
        """Try to send what is queued within `timeout_s`; whether nothing is left."""
        try:
            return await asyncio.wait_for(self.send_pending(), timeout_s)
        except TimeoutError:
            return False


def _market_head(summary: dict[str, Any] | None) -> ChainHead | None:
    """The head `GET /providers/{address}` gives as `latest_attestation`."""
    if summary is None:
        return None
    return ChainHead(
        seq=int(summary["seq"]),
        digest=str(summary["digest"]),
        window_end=int(summary["window_end_ms"]),
    )


def describe_log(store: AttestationLog) -> str:
    """One line on the chain's state."""
    head = store.last()
    unsent = len(store.unsent())
    if head is None:
        return "no attestation yet"
    return json.dumps({"head_seq": head.message.seq, "unsent": unsent})
