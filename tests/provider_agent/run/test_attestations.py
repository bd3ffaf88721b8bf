"""The attestation loop against a real HTTP market double: chain, persistence, retries."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pynvml
import pytest
from nacl.signing import SigningKey

from protocol.keys import ProviderIdentity
from protocol.messages import ZERO_HASH, Attestation, Signed, check_chain, message_digest
from provider_agent.attestations import (
    DECLARED_GPU_UUID,
    AttestationBuilder,
    AttestationLog,
    AttestationLoop,
)
from provider_agent.energy import (
    Clock,
    EnergyMeter,
    EnergyReading,
    EstimatedMeter,
    NvmlMeter,
    UnmeasuredMeter,
    system_clock,
)
from provider_agent.energy import GpuReading as MeterGpuReading
from provider_agent.engine.errors import MetricsUnavailableError
from provider_agent.engine.metrics import EngineCounters
from provider_agent.market_client import MarketClient, MarketError
from tests.provider_agent.nvml_double import FakeGpu, FakeNvml
from tests.provider_agent.run.market_double import DOMAIN, MarketDouble, running_market


class Counters:
    """vLLM counters that grow by a fixed step per read; can restart or vanish."""

    def __init__(self) -> None:
        self.prompt = 100
        self.generation = 1000
        self.running = 2
        self.unavailable = False

    async def __call__(self) -> EngineCounters:
        if self.unavailable:
            raise MetricsUnavailableError("GET /metrics failed: told to")
        self.prompt += 3
        self.generation += 7
        return EngineCounters(self.prompt, self.generation, self.running, 1)


def make_loop(
    data_dir: Path,
    identity: ProviderIdentity,
    market: MarketDouble | None,
    counters: Counters,
    meter: EnergyMeter | None = None,
    window_s: float = 0.15,
    gpu_name: str = "RTX 4090",
) -> tuple[AttestationLoop, AttestationLog, MarketClient | None]:
    store = AttestationLog(data_dir, fsync=False)
    builder = AttestationBuilder(
        provider=identity.address,
        domain=DOMAIN,
        signing_key=identity.signing_key,
        log_store=store,
        declared_gpu_name=gpu_name,
    )
    client = None if market is None else MarketClient(market.url, identity, DOMAIN)
    loop = AttestationLoop(
        builder=builder,
        meter=meter or UnmeasuredMeter("NVML unavailable (library_not_found): test"),
        counters=counters,
        market=client,
        window_s=window_s,
        sample_s=0.05,
        retry_initial_s=0.05,
        retry_max_s=0.2,
    )
    return loop, store, client


async def run_for(loop: AttestationLoop, until: Callable[[], bool], timeout_s: float = 15) -> None:
    """Run the loop until `until()` holds, then cancel it."""
    task = asyncio.create_task(loop.run())
    try:
        await wait_for(task, until, timeout_s)
    finally:
        await stop(task)


async def wait_for(
    task: asyncio.Task[None], until: Callable[[], bool], timeout_s: float = 15
) -> None:
    """Wait until `until()` holds while `task` runs (its failure is raised)."""
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "condition not reached in time"
        if task.done():
            task.result()
        await asyncio.sleep(0.02)


async def close(client: MarketClient | None) -> None:
    """Close the loop's market client (the loop of a test with a market has one)."""
    assert client is not None
    await client.aclose()


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel the loop's task and wait for it to end."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def assert_contiguous(attestations: list[Attestation]) -> None:
    """Each window starts where the one before ended: none is lost, even unstored ones."""
    windows = [(a.window_start, a.window_end) for a in attestations]
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert start == end


def assert_chain(attestations: list[Attestation]) -> None:
    previous = None
    for attestation in attestations:
        check_chain(previous, attestation)
        previous = attestation


def arun(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def test_the_chain_continues_across_a_restart(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    counters = Counters()
    with running_market() as market:

        async def first_run() -> None:
            loop, _store, client = make_loop(tmp_path, identity, market, counters)
            await run_for(loop, lambda: len(market.attestations) >= 3)
            assert client is not None
            await loop.flush(5)
            await client.aclose()

        async def second_run() -> None:
            loop, store, client = make_loop(tmp_path, identity, market, counters)
            head = store.last()
            assert head is not None
            start = len(market.attestations)
            assert start == head.message.seq + 1
            await run_for(loop, lambda: len(market.attestations) >= start + 3)
            await close(client)
            assert store.all()[start].message.prev_hash == message_digest(head.message)

        arun(first_run())
        arun(second_run())
        assert market.refused == []
        attestations = market.attestations
        assert attestations[0].seq == 0
        assert attestations[0].prev_hash == ZERO_HASH
        assert_chain(attestations)
        first = attestations[0]
        assert first.energy_method == "unmeasured"
        assert first.energy_basis is not None
        assert "NVML unavailable" in first.energy_basis
        assert first.tokens.generation_tokens_end > first.tokens.generation_tokens_start
        assert first.avg_running_requests_milli == 2000
        assert first.avg_waiting_requests_milli == 1000


def test_a_line_separator_in_a_text_field_does_not_break_the_chain_file(tmp_path: Path) -> None:
    # JSON writes U+2028 and U+0085 raw; a reader that split lines at them saw torn lines
    identity = ProviderIdentity.generate()
    name = "RTX 4090\u2028(rig A)\u0085"

    async def run() -> list[int]:
        meter = EstimatedMeter(350.0, "NVML unavailable (library_not_found): test")
        loop, store, _ = make_loop(tmp_path, identity, None, Counters(), meter, gpu_name=name)
        await run_for(loop, lambda: len(store.all()) >= 3)
        return [e.message.seq for e in store.all()]

    seqs = asyncio.run(run())
    assert "\u2028" in (tmp_path / "attestations.jsonl").read_text()  # written raw
    reopened = AttestationLog(tmp_path)
    assert [e.message.seq for e in reopened.all()] == seqs
    head = reopened.head()
    assert head is not None
    assert head.seq == seqs[-1]
    assert [e.message.seq for e in reopened.unsent()] == seqs
    assert not reopened.unreadable_path.exists()


def test_failed_posts_are_retried_in_order_and_none_is_lost(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    with running_market() as market:
        market.fail_next = 5

        async def scenario() -> None:
            loop, store, client = make_loop(tmp_path, identity, market, Counters())
            await run_for(loop, lambda: len(market.attestations) >= 4 and not store.unsent())
            assert loop.send_failures >= 5
            await close(client)

        arun(scenario())
        assert market.refused == []
        assert_chain(market.attestations)
        assert [a.seq for a in market.attestations] == list(range(len(market.attestations)))


def test_attestations_queued_while_the_market_is_down_are_sent_after_a_restart(
    tmp_path: Path,
) -> None:
    identity = ProviderIdentity.generate()
    with running_market() as market:
        market.fail_all = True

        async def while_down() -> None:
            loop, store, client = make_loop(tmp_path, identity, market, Counters())
            await run_for(loop, lambda: len(store.all()) >= 3)
            assert not await loop.flush(1)  # still down: kept, not dropped
            await close(client)

        arun(while_down())
        queued = AttestationLog(tmp_path).unsent()
        assert len(queued) >= 3
        assert market.attestations == []
        market.fail_all = False

        async def after_restart() -> None:
            loop, store, client = make_loop(tmp_path, identity, market, Counters())
            assert await loop.flush(5)
            assert store.unsent() == []
            await close(client)

        arun(after_restart())
        assert [a.seq for a in market.attestations] == [e.message.seq for e in queued]
        assert_chain(market.attestations)


def test_resending_an_attestation_the_market_has_is_harmless(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    with running_market() as market:

        async def scenario() -> None:
            loop, store, client = make_loop(tmp_path, identity, market, Counters())
            await run_for(loop, lambda: len(market.attestations) >= 2 and not store.unsent())
            assert client is not None
            # the ack was lost: the agent sends it again
            await client.post_attestation(store.all()[0])
            await client.aclose()

        arun(scenario())
        assert market.refused == []


def test_windows_with_unreadable_or_reset_counters_are_skipped_without_breaking_the_chain(
    tmp_path: Path,
) -> None:
    identity = ProviderIdentity.generate()
    counters = Counters()
    with running_market() as market:

        async def scenario() -> None:
            loop, _store, client = make_loop(tmp_path, identity, market, counters)
            await run_for(loop, lambda: len(market.attestations) >= 2)
            counters.prompt, counters.generation = 0, 0  # vLLM restarted
            await run_for(loop, lambda: len(market.attestations) >= 4)
            counters.unavailable = True
            await asyncio.sleep(0.4)
            counters.unavailable = False
            await run_for(loop, lambda: len(market.attestations) >= 6)
            await close(client)

        arun(scenario())
        assert market.refused == []
        assert_chain(market.attestations)
        for attestation in market.attestations:
            assert attestation.tokens.prompt_tokens_end >= attestation.tokens.prompt_tokens_start


def test_an_estimated_meter_attests_a_declared_counter_that_continues(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    meter = EstimatedMeter(350.0, "NVML unavailable (library_not_found): test")
    with running_market() as market:

        async def scenario() -> None:
            loop, store, client = make_loop(tmp_path, identity, market, Counters(), meter=meter)
            await run_for(loop, lambda: len(market.attestations) >= 3)
            await close(client)
            # what the agent's status and metrics show: the energy of every window it signed
            signed = [envelope.message for envelope in store.all()]
            assert loop.produced == len(signed)
            energy = sum(message.energy_mj or 0 for message in signed)
            assert energy > 0
            assert loop.energy_mj == {"estimated": energy}

        arun(scenario())
        assert market.refused == []
        previous_end = 0
        for attestation in market.attestations:
            assert attestation.energy_method == "estimated"
            assert attestation.energy_basis is not None
            assert attestation.energy_basis.startswith("declared 350")
            (gpu,) = attestation.gpus
            assert gpu.uuid == DECLARED_GPU_UUID
            assert gpu.name == "RTX 4090"
            assert gpu.energy_mj_start == previous_end
            assert gpu.energy_mj_end is not None
            assert gpu.energy_mj_end > gpu.energy_mj_start
            previous_end = gpu.energy_mj_end


def _torn_log(data_dir: Path) -> bytes:
    """A log of two attestations or more, then a torn line: the whole lines."""

    async def scenario() -> None:
        loop, store, _ = make_loop(data_dir, ProviderIdentity.generate(), None, Counters())
        await run_for(loop, lambda: len(store.all()) >= 2)

    arun(scenario())
    path = data_dir / "attestations.jsonl"
    whole = path.read_bytes()
    with path.open("ab") as out:
        out.write(b'{"message": {"type": "attes')
    return whole


def test_a_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    whole = _torn_log(tmp_path)
    store = AttestationLog(tmp_path)
    assert len(store.all()) == whole.count(b"\n")
    assert (tmp_path / "attestations.jsonl").read_bytes() == whole


def test_cutting_a_torn_last_line_rewrites_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fragment is cut off in place: a disk that fails every write meanwhile (or a
    crash) cannot take the whole attestations before it with it."""
    whole = _torn_log(tmp_path)
    opened = Path.open

    def full_disk(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            opened(self, mode, *args, **kwargs).close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return opened(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_disk)
    AttestationLog(tmp_path)
    assert (tmp_path / "attestations.jsonl").read_bytes() == whole


def _reading(ns: int, ms: int, counters: dict[str, int | None]) -> EnergyReading:
    gpus = tuple(
        MeterGpuReading(uuid, "NVIDIA H100", energy, None, 700_000)
        for uuid, energy in counters.items()
    )
    return EnergyReading("measured", ns, ms, gpus)


def test_measured_windows_carry_counters_and_power_and_a_reset_is_unmeasured(
    tmp_path: Path,
) -> None:
    identity = ProviderIdentity.generate()
    store = AttestationLog(tmp_path, fsync=False)
    builder = AttestationBuilder(
        provider=identity.address,
        domain=DOMAIN,
        signing_key=identity.signing_key,
        log_store=store,
        driver_version="550.54.15",
    )
    tokens = [EngineCounters(10 * i, 100 * i, 1, 0) for i in range(3)]
    start = _reading(0, 1_000, {"GPU-a": 1_000_000, "GPU-b": 5_000})
    middle = _reading(2 * 10**9, 3_000, {"GPU-a": 1_700_000, "GPU-b": 405_000})
    end = _reading(4 * 10**9, 5_000, {"GPU-a": 100, "GPU-b": 805_000})  # GPU-a was reset
    first = builder.build(start, middle, tokens[0], tokens[1], [1, 2], [0, 1])
    second = builder.build(middle, end, tokens[1], tokens[2], [1], [0])
    assert first is not None
    assert second is not None
    one, two = first.message, second.message
    assert one.energy_method == "measured"
    assert [(g.uuid, g.energy_mj_start, g.energy_mj_end, g.avg_power_mw) for g in one.gpus] == [
        ("GPU-a", 1_000_000, 1_700_000, 350_000),
        ("GPU-b", 5_000, 405_000, 200_000),
    ]
    assert one.driver_version == "550.54.15"
    assert (one.avg_running_requests_milli, one.avg_waiting_requests_milli) == (1500, 500)
    assert (one.window_start, one.window_end) == (1_000, 3_000)
    assert two.energy_method == "unmeasured"
    assert two.energy_basis is not None
    assert "reset" in two.energy_basis
    assert all(g.energy_mj_start is None and g.avg_power_mw is None for g in two.gpus)
    check_chain(None, one)
    check_chain(one, two)
    assert [e.message for e in AttestationLog(tmp_path).all()] == [one, two]


def test_a_failed_meter_read_makes_its_windows_unmeasured_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-a")])
    meter = NvmlMeter(nvml, clock=nvml.clock)
    counters = Counters()

    async def fetch() -> EngineCounters:  # one second of simulated time per engine read
        nvml.advance(10**9)
        return await counters()

    identity = ProviderIdentity.generate()
    with running_market() as market:

        async def scenario() -> None:
            loop, _store, client = make_loop(tmp_path, identity, market, counters, meter=meter)
            loop.counters, loop.clock = fetch, nvml.clock
            await run_for(loop, lambda: len(market.attestations) >= 2)
            nvml.gpus[0].energy_error = pynvml.NVML_ERROR_GPU_IS_LOST
            held = len(market.attestations)
            await run_for(loop, lambda: len(market.attestations) >= held + 2)
            nvml.gpus[0].energy_error = None
            held = len(market.attestations)
            await run_for(loop, lambda: len(market.attestations) >= held + 3)
            await close(client)

        arun(scenario())
    assert market.refused == []
    assert_chain(market.attestations)
    methods = [a.energy_method for a in market.attestations]
    assert methods[0] == "measured"
    assert methods[-1] == "measured"
    lost = [a for a in market.attestations if a.energy_method == "unmeasured"]
    assert lost
    for attestation in lost:
        assert attestation.energy_basis is not None
        assert "meter read failed (gpu_lost)" in attestation.energy_basis
        assert all(g.energy_mj_start is None and g.avg_power_mw is None for g in attestation.gpus)


def test_an_attestation_the_log_cannot_store_is_retried_next_window(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    with running_market() as market:

        async def scenario() -> None:
            loop, store, client = make_loop(tmp_path, identity, market, Counters())
            task = asyncio.create_task(loop.run())
            await wait_for(task, lambda: len(market.attestations) >= 2 and not store.unsent())
            kept = store.path.with_name("kept.jsonl")
            store.path.rename(kept)
            store.path.mkdir()  # every append now fails, as on a full disk
            produced = loop.produced
            await wait_for(task, lambda: loop.write_error is not None)
            await asyncio.sleep(0.5)
            assert loop.produced == produced
            store.path.rmdir()
            kept.rename(store.path)
            await wait_for(task, lambda: loop.write_error is None and len(market.attestations) >= 4)
            await stop(task)
            await close(client)

        arun(scenario())
    assert market.refused == []
    assert_chain(market.attestations)
    assert_contiguous(market.attestations)  # the window that could not be stored is in the next


@pytest.mark.parametrize("written", [0.5, 1.0], ids=["half-written", "written-then-refused"])
def test_a_full_disk_skips_windows_and_acknowledgements_and_leaves_the_logs_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: float
) -> None:
    def full_disk(fd: int, data: bytes) -> None:
        """A write that stores `written` of `data`, then fails as a full disk does."""
        os.write(fd, data[: int(len(data) * written)])
        raise OSError(errno.ENOSPC, "No space left on device")

    identity = ProviderIdentity.generate()
    with running_market() as market:
        market.fail_all = True

        async def scenario() -> None:
            loop, store, client = make_loop(tmp_path, identity, market, Counters())
            task = asyncio.create_task(loop.run())
            await wait_for(task, lambda: len(store.unsent()) >= 2)
            with monkeypatch.context() as disk:
                disk.setattr("provider_agent.appending.write_all", full_disk)
                market.fail_all = False  # sent now, but the acknowledgements cannot be written
                await wait_for(task, lambda: loop.write_error is not None)
                await wait_for(task, lambda: len(market.attestations) == 1)
                await asyncio.sleep(0.5)
                assert len(store.unsent()) >= 2  # the first is the market's, yet still queued
            await wait_for(task, lambda: loop.write_error is None and len(market.attestations) >= 4)
            await wait_for(task, lambda: not store.unsent())
            await stop(task)
            await close(client)

        arun(scenario())
    assert market.refused == []
    assert_chain(market.attestations)
    assert_contiguous(market.attestations)  # the windows not stored are in the next one
    reopened = AttestationLog(tmp_path)
    sent = len(market.attestations)
    assert [envelope.message for envelope in reopened.all()][:sent] == market.attestations
    assert not reopened.unreadable_path.exists()


def test_attestations_signed_before_a_key_rotation_are_set_aside_and_the_chain_goes_on(
    tmp_path: Path,
) -> None:
    old = ProviderIdentity.generate()
    with running_market() as market:

        async def before_rotation() -> None:
            loop, store, client = make_loop(tmp_path, old, market, Counters())
            await run_for(loop, lambda: len(market.attestations) >= 2 and not store.unsent())
            await close(client)
            offline, store, _ = make_loop(tmp_path, old, None, Counters())
            await run_for(offline, lambda: len(store.unsent()) >= 3)  # the market was down

        arun(before_rotation())
        queued = [e.message.seq for e in AttestationLog(tmp_path).unsent()]
        held = len(market.attestations)
        new = ProviderIdentity(SigningKey.generate(), old.eth_account)
        market.trusted_key = new.public_key_hex

        async def after_rotation() -> None:
            loop, _store, client = make_loop(tmp_path, new, market, Counters())
            await run_for(loop, lambda: len(market.attestations) >= held + 2)
            assert loop.set_aside == len(queued)
            assert loop.last_refusal is not None
            assert "401" in loop.last_refusal
            await close(client)

        arun(after_rotation())
        assert_chain(market.attestations)
        assert market.attestations[held].seq == held  # the new key's first follows the old
        refused = [json.loads(line) for line in (tmp_path / "attestations-refused.jsonl").open()]
        assert [r["seq"] for r in refused] == queued
        assert {r["status"] for r in refused} == {401}


def test_an_agent_that_lost_its_data_dir_resumes_its_chain_from_the_market(
    tmp_path: Path,
) -> None:
    identity = ProviderIdentity.generate()
    with running_market() as market:

        async def run_until(data_dir: Path, count: int) -> AttestationLoop:
            loop, store, client = make_loop(data_dir, identity, market, Counters())
            await run_for(loop, lambda: len(market.attestations) >= count and not store.unsent())
            await close(client)
            return loop

        async def with_the_first_dir() -> None:
            await run_until(tmp_path / "lost", 3)

        arun(with_the_first_dir())
        held = len(market.attestations)

        async def with_a_fresh_dir() -> None:
            loop = await run_until(tmp_path / "fresh", held + 2)
            assert loop.set_aside >= 1
            assert loop.last_refusal is not None
            assert f"the market's seq {held - 1}" in loop.last_refusal

        arun(with_a_fresh_dir())
        assert_chain(market.attestations)
        refused = (tmp_path / "fresh" / "attestations-refused.jsonl").read_text()
        assert '"status": 409' in refused
        head = AttestationLog(tmp_path / "fresh").head()
        assert head is not None
        assert head.seq == market.attestations[-1].seq  # a restart goes on from there


def test_a_damaged_line_in_the_logs_is_set_aside_and_the_chain_goes_on(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    with running_market() as market:

        async def until(count: int) -> None:
            loop, store, client = make_loop(tmp_path, identity, market, Counters())
            await run_for(loop, lambda: len(market.attestations) >= count and not store.unsent())
            await close(client)

        arun(until(4))
        path = tmp_path / "attestations.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        lines[1] = lines[1].replace('"seq":1', '"seq":1x')
        path.write_text("".join(lines))
        (tmp_path / "attestations-sent.jsonl").write_text("0\n\x00\x00\n")

        store = AttestationLog(tmp_path)
        assert [e.message.seq for e in store.all()][:2] == [0, 2]
        unreadable = (tmp_path / "attestations-unreadable.jsonl").read_text()
        assert '"seq":1x' in unreadable
        held = len(market.attestations)
        arun(until(held + 2))  # the unsent are sent again (acknowledged), then new ones
    assert market.refused == []
    assert_chain(market.attestations)
    assert '"seq":1x' not in path.read_text()


class ChainMarket:
    """An in-process market that checks the chain of what it is sent: a gap, a fork or an
    attestation sent twice fails the post."""

    def __init__(self, held: list[Attestation] | None = None) -> None:
        self.attestations: list[Attestation] = list(held or [])

    async def post_attestation(self, envelope: Signed[Attestation]) -> object:
        previous = self.attestations[-1] if self.attestations else None
        check_chain(previous, envelope.message)
        self.attestations.append(envelope.message)
        return {"seq": envelope.message.seq}

    async def latest_attestation(self) -> dict[str, Any] | None:
        raise AssertionError("the chain is never refused here")


def direct_loop(
    data_dir: Path,
    identity: ProviderIdentity,
    market: ChainMarket,
    archive_after: int,
    retention_days: int | None = None,
    clock: Clock = system_clock,
) -> tuple[AttestationLoop, AttestationLog]:
    """A loop whose windows the test builds itself (`build_windows`), without timers."""
    store = AttestationLog(data_dir, fsync=False)
    builder = AttestationBuilder(
        provider=identity.address, domain=DOMAIN, signing_key=identity.signing_key, log_store=store
    )
    loop = AttestationLoop(
        builder=builder,
        meter=UnmeasuredMeter("test"),
        counters=Counters(),
        market=market,
        archive_after=archive_after,
        retention_days=retention_days,
        clock=clock,
    )
    return loop, store


def build_windows(loop: AttestationLoop, count: int) -> None:
    """Sign `count` one-second windows after the chain's head."""
    head = loop.builder.store.head()
    start_ms = 1_790_000_000_000 if head is None else head.window_end
    tokens = EngineCounters(0, 0, 0, 0)
    for n in range(count):
        begin = EnergyReading("unmeasured", n * 10**9, start_ms + 1000 * n, reason="test")
        end = EnergyReading("unmeasured", (n + 1) * 10**9, start_ms + 1000 * (n + 1), reason="t")
        assert loop.builder.build(begin, end, tokens, tokens, [0], [0]) is not None


def stored_seqs(store: AttestationLog) -> list[int]:
    """The seqs of the archive and of the chain file, archive first."""
    return [e.message.seq for e in [*store.archived(), *store.all()]]


def test_the_chain_file_stays_bounded_over_many_windows_and_goes_on_after_a_restart(
    tmp_path: Path,
) -> None:
    identity = ProviderIdentity.generate()
    market = ChainMarket()

    async def windows(count: int) -> None:
        loop, store = direct_loop(tmp_path, identity, market, archive_after=10)
        for _ in range(count):
            build_windows(loop, 1)
            assert await loop.send_pending()
            assert len(store.all()) <= 10 + 1  # the acknowledged ones, and the head
            assert len((tmp_path / "attestations-sent.jsonl").read_text().split()) <= 10 + 1

    arun(windows(250))
    restarted = AttestationLog(tmp_path)
    assert len(restarted.all()) <= 11  # a start reads what is left, not the whole history
    head = restarted.head()
    assert head is not None
    assert head.seq == 249
    assert stored_seqs(restarted) == list(range(250))
    assert len(restarted.archive_paths()) >= 20

    arun(windows(30))  # the chain goes on after the restart
    assert_chain(market.attestations)
    assert [a.seq for a in market.attestations] == list(range(280))
    store = AttestationLog(tmp_path)
    assert stored_seqs(store) == list(range(280))
    assert [e.message for e in [*store.archived(), *store.all()]] == market.attestations


DAY_MS = 86_400_000
FIRST_DAY_MS = 1_789_948_800_000  # 2026-09-21T00:00Z
RETENTION_TODAY_MS = FIRST_DAY_MS + 10 * DAY_MS + 3_600_000  # 2026-10-01T01:00Z


def window_ending(loop: AttestationLoop, day: float) -> None:
    """Sign one window after the chain's head, ending `day` days after `FIRST_DAY_MS`."""
    head = loop.builder.store.head()
    start_ms = FIRST_DAY_MS if head is None else head.window_end
    end_ms = FIRST_DAY_MS + int(day * DAY_MS)
    begin = EnergyReading("unmeasured", 0, start_ms, reason="test")
    end = EnergyReading("unmeasured", 10**9, end_ms, reason="test")
    tokens = EngineCounters(0, 0, 0, 0)
    assert loop.builder.build(begin, end, tokens, tokens, [0], [0]) is not None


def archive_over_days(data_dir: Path, retention_days: int | None) -> AttestationLog:
    """Five archive files (one per send) of attestations ending on the given days after
    `FIRST_DAY_MS`, with the clock 10 days after it; archived as:
    day 0 (seq 0), day 0 (seq 1), days 6 to 6 (seqs 2-3), days 6 to 7 (seqs 4-5), day 7 (6)."""
    identity = ProviderIdentity.generate()
    clock: Clock = lambda: (0, RETENTION_TODAY_MS)  # noqa: E731
    loop, store = direct_loop(
        data_dir, identity, ChainMarket(), 1, retention_days=retention_days, clock=clock
    )
    sends = [[0.1, 0.2], [6.1], [6.3, 6.8], [7.5, 7.6], [9.0]]

    async def send() -> None:
        for days in sends:
            for day in days:
                window_ending(loop, day)
            assert await loop.send_pending()

    arun(send())
    return store


def test_archive_files_older_than_the_retention_are_deleted_only_with_it(tmp_path: Path) -> None:
    kept_all = archive_over_days(tmp_path / "kept", None)
    assert [path.name[:10] for path in kept_all.archive_paths()] == [
        "2026-09-21",
        "2026-09-21",
        "2026-09-27",
        "2026-09-27",
        "2026-09-28",
    ]
    assert stored_seqs(kept_all) == list(range(8))

    store = archive_over_days(tmp_path / "retained", 3)  # days before 2026-09-28 go

    # the second file on 2026-09-27 ends on 2026-09-28: kept whole, as is the chain's head
    assert [path.name[:10] for path in store.archive_paths()] == ["2026-09-27", "2026-09-28"]
    assert stored_seqs(store) == [4, 5, 6, 7]
    assert stored_seqs(AttestationLog(tmp_path / "retained")) == [4, 5, 6, 7]


def test_an_unreadable_archive_file_is_kept(tmp_path: Path) -> None:
    archive = tmp_path / "attestations-archive"
    archive.mkdir()
    damaged = archive / "2026-09-21-seq-000000000000-damaged.jsonl.gz"
    damaged.write_bytes(b"not gzip")
    store = archive_over_days(tmp_path, 3)
    assert damaged in store.archive_paths()
    assert store.remove_archived(FIRST_DAY_MS // DAY_MS + 7) == []


Replace = Callable[[Path, bytes], None]


def crash_at_step(real: Replace, step: int, after_rename: bool) -> Replace:
    """`real`, except that its call number `step` (0 first) raises, before or after it has
    put the new file in place: the agent killed between two steps of archiving."""
    done: list[Path] = []

    def crashing(path: Path, data: bytes) -> None:
        if len(done) == step:
            if after_rename:
                real(path, data)
            raise OSError("killed mid-archiving")
        real(path, data)
        done.append(path)

    return crashing


def test_a_crash_at_any_step_of_archiving_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = ProviderIdentity.generate()
    market = ChainMarket()
    source = tmp_path / "source"

    async def prepare() -> None:
        loop, store = direct_loop(source, identity, market, archive_after=10_000)
        build_windows(loop, 30)
        assert await loop.send_pending()
        build_windows(loop, 4)  # queued: the market is down
        assert [e.message.seq for e in store.unsent()] == [30, 31, 32, 33]

    arun(prepare())
    held = list(market.attestations)
    steps = 3  # the archive file, the chain file, the sent file
    for crash_at in range(steps):
        for after_rename in (False, True):
            data_dir = tmp_path / f"crash-{crash_at}-{after_rename}"
            shutil.copytree(source, data_dir)
            store = AttestationLog(data_dir, fsync=False)
            crashing = crash_at_step(store._replace, crash_at, after_rename)
            monkeypatch.setattr(store, "_replace", crashing)
            with pytest.raises(OSError, match="killed mid-archiving"):
                store.archive_sent()

            restarted = AttestationLog(data_dir, fsync=False)  # the agent starts again
            assert [e.message.seq for e in restarted.unsent()] == [30, 31, 32, 33]
            assert set(stored_seqs(restarted)) == set(range(34))
            head = restarted.head()
            assert head is not None
            assert head.seq == 33

            market = ChainMarket(held)  # sending one it already has would fail the chain

            async def restart(data_dir: Path = data_dir, market: ChainMarket = market) -> None:
                loop, store = direct_loop(data_dir, identity, market, archive_after=1)
                assert await loop.send_pending()  # sends the queue, then archives
                build_windows(loop, 2)
                assert await loop.send_pending()
                assert store.unsent() == []

            arun(restart())
            assert [a.seq for a in market.attestations] == list(range(36))
            final = AttestationLog(data_dir)
            assert stored_seqs(final) == list(range(36))  # each exactly once
            assert [e.message for e in [*final.archived(), *final.all()]] == market.attestations


UNTRUSTED = "401: the signature is by a key the market no longer trusts"


class RefusingMarket(ChainMarket):
    """Refuses every attestation for good (401, as after a key rotation); its head is `head`."""

    def __init__(self, head: dict[str, Any]) -> None:
        super().__init__()
        self.head = head

    async def post_attestation(self, envelope: Signed[Attestation]) -> object:
        raise MarketError(UNTRUSTED, status=401)

    async def latest_attestation(self) -> dict[str, Any] | None:
        return self.head


def disk_with_room(room: int) -> Callable[[int, bytes], None]:
    """`write_all` on a disk with `room` bytes left: it writes what fits, then fails."""
    left = [room]

    def write_all(fd: int, data: bytes) -> None:
        fits = min(left[0], len(data))
        os.write(fd, data[:fits])
        left[0] -= fits
        if fits < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")

    return write_all


@pytest.mark.parametrize("failing", ["refused-list", "anchor"])
def test_a_resume_the_disk_cannot_store_is_tried_again_and_lists_each_refusal_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    identity = ProviderIdentity.generate()
    head = {"seq": 41, "digest": "0x" + "ab" * 32, "window_end_ms": 1_789_999_999_000}
    loop, store = direct_loop(tmp_path, identity, RefusingMarket(head), archive_after=1)
    build_windows(loop, 3)
    queued = [(e.message.seq, message_digest(e.message)) for e in store.unsent()]
    chain = store.path.read_bytes()

    def listed() -> list[tuple[int, str]]:
        if not store.refused_path.exists():
            return []
        records = [json.loads(line) for line in store.refused_path.read_text().splitlines()]
        assert all((r["status"], r["reason"]) == (401, UNTRUSTED) for r in records)
        return [(r["seq"], r["digest"]) for r in records]

    async def scenario() -> None:
        staged_anchor = store.anchor_path.with_name(store.anchor_path.name + ".tmp")
        with monkeypatch.context() as disk:
            if failing == "refused-list":
                one = json.dumps({"seq": 0, "digest": queued[0][1], "status": 401})
                record = len(one) + len(json.dumps(UNTRUSTED)) + 12
                disk.setattr("provider_agent.appending.write_all", disk_with_room(record * 3 // 2))
            else:
                staged_anchor.mkdir()  # the anchor cannot be written
            assert not await loop.send_pending()  # the loop goes on, and tries again
            assert not await loop.send_pending()
        with contextlib.suppress(FileNotFoundError):
            staged_anchor.rmdir()
        assert loop.set_aside == 0
        assert [(e.message.seq, message_digest(e.message)) for e in store.unsent()] == queued
        assert store.path.read_bytes() == chain
        assert listed() in ([], queued)  # all of them or none

        assert await loop.send_pending()  # space again: the chain resumes from the market's

    arun(scenario())
    assert loop.set_aside == 3
    assert listed() == queued  # each listed once
    assert store.unsent() == []
    resumed = store.head()
    assert resumed is not None
    assert (resumed.seq, resumed.digest) == (41, head["digest"])
    assert AttestationLog(tmp_path).head() == resumed  # the anchor was stored
    kept = list(tmp_path.glob("attestations-until-*.jsonl"))
    assert [p.read_bytes() for p in kept] == [chain]  # the set-aside ones are kept
    build_windows(loop, 1)
    assert store.all()[0].message.seq == 42
