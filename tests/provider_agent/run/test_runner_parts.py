"""`AgentRunner` in-process against the fake engine: what a failing part does to the agent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pynvml
import pytest
from nacl.signing import SigningKey

from market.demo.ports import free_port
from protocol.keys import ProviderIdentity, public_key_hex
from protocol.messages import JobTicket, new_job_id, request_digest, sign
from provider_agent.config import AgentSettings
from provider_agent.energy import EnergyMeter, NvmlMeter, UnmeasuredMeter
from provider_agent.engine.metrics import EngineCounters
from provider_agent.jobs.tickets import TICKET_HEADER, encode_ticket_header
from provider_agent.runner import AgentRunner, RunPlan
from tests.provider_agent.nvml_double import FakeGpu, FakeNvml
from tests.provider_agent.run.market_double import DOMAIN
from tests.support.openai_upstream import UpstreamProcess, start_upstream

DIGEST = "0x" + "ab" * 32
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    engine = start_upstream()
    try:
        yield engine
    finally:
        engine.stop()


MARKET_KEY = SigningKey.generate()


def make_runner(data_dir: Path, engine_port: int, meter: EnergyMeter) -> AgentRunner:
    settings = AgentSettings(
        data_dir=data_dir,
        vllm={"url": f"http://127.0.0.1:{engine_port}", "served_model": MODEL},
        market_public_key=public_key_hex(MARKET_KEY),
        listen={"port": free_port()},
        run={"attestation_window_s": 0.2, "shutdown_grace_s": 1, "flush_timeout_s": 1},
    )
    plan = RunPlan(MODEL, DIGEST, public_key_hex(MARKET_KEY), DOMAIN)
    return AgentRunner(settings, ProviderIdentity.generate(), meter, plan, sample_s=0.05)


def send_job(runner: AgentRunner) -> httpx.Response:
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 4}).encode()
    now = int(time.time() * 1000)
    ticket = JobTicket(
        job_id=new_job_id(),
        provider=runner.identity.address,
        request_digest=request_digest(body),
        model=MODEL,
        max_tokens=4,
        issued_at=now,
        expires_at=now + 60_000,
        domain=DOMAIN,
    )
    url = f"http://127.0.0.1:{runner.settings.listen.port}/jobs/completions"
    headers = {TICKET_HEADER: encode_ticket_header(sign(ticket, MARKET_KEY))}
    return httpx.post(url, content=body, headers=headers, timeout=10)


def agent_status(runner: AgentRunner) -> dict[str, Any] | None:
    url = f"http://127.0.0.1:{runner.settings.listen.port}/agent/status"
    try:
        result: dict[str, Any] = httpx.get(url, timeout=2).json()
    except httpx.HTTPError:
        return None
    return result


async def wait_for(task: asyncio.Task[int], until: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not until():
        assert not task.done(), f"the agent stopped ({task.result()}) before {what}"
        assert time.monotonic() < deadline, f"{what}: not reached in time"
        await asyncio.sleep(0.05)


def test_a_lost_gpu_leaves_the_agent_serving_with_unmeasured_windows(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-a")])
    runner = make_runner(tmp_path, upstream.port, NvmlMeter(nvml))

    def unmeasured_windows() -> int:
        return sum(
            "meter read failed (gpu_lost)" in (envelope.message.energy_basis or "")
            for envelope in runner.store.all()
        )

    async def scenario() -> int:
        task = asyncio.create_task(runner.run(install_signals=False))
        await wait_for(task, lambda: len(runner.store.all()) >= 1, "a first attestation")
        nvml.gpus[0].energy_error = pynvml.NVML_ERROR_GPU_IS_LOST
        await wait_for(task, lambda: unmeasured_windows() >= 3, "unmeasured windows")
        status = await asyncio.to_thread(agent_status, runner)
        assert status is not None
        assert status["engine"]["state"] == "healthy"
        runner.request_stop()
        return await asyncio.wait_for(task, 20)

    assert asyncio.run(scenario()) == 0


def test_a_part_that_dies_makes_run_return_1(tmp_path: Path, upstream: UpstreamProcess) -> None:
    runner = make_runner(tmp_path, upstream.port, UnmeasuredMeter("test"))

    async def broken_counters() -> EngineCounters:
        raise RuntimeError("a bug in the attestation loop")

    runner.attestations.counters = broken_counters
    code = asyncio.run(asyncio.wait_for(runner.run(install_signals=False), 30))
    assert code == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_outbox_that_cannot_be_written_makes_the_agent_unhealthy(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    runner = make_runner(tmp_path, upstream.port, UnmeasuredMeter("test"))
    day = tmp_path / "receipts" / f"{datetime.now(UTC).date().isoformat()}.jsonl"

    async def scenario() -> int:
        task = asyncio.create_task(runner.run(install_signals=False))
        await wait_for(task, lambda: runner.jobs is not None, "the job server")
        day.parent.mkdir(parents=True, exist_ok=True)
        day.symlink_to("/dev/full")  # the disk is full from now on
        response = await asyncio.to_thread(send_job, runner)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "outbox_unavailable"
        status = await asyncio.to_thread(agent_status, runner)
        assert status is not None
        assert status["healthy"] is False
        assert "No space left on device" in status["receipts"]["outbox_error"]
        day.unlink()
        assert (await asyncio.to_thread(send_job, runner)).status_code == 200
        status = await asyncio.to_thread(agent_status, runner)
        assert status is not None
        assert status["healthy"] is True
        runner.request_stop()
        return await asyncio.wait_for(task, 20)

    assert asyncio.run(scenario()) == 0


def test_a_nearly_full_disk_makes_the_agent_unhealthy_until_space_returns(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    runner = make_runner(tmp_path, upstream.port, UnmeasuredMeter("test"))
    free = [1024 * 1024]  # 1 MiB, below the 64 MiB kept free by default

    async def scenario() -> int:
        task = asyncio.create_task(runner.run(install_signals=False))
        await wait_for(task, lambda: runner.jobs is not None, "the job server")
        assert runner.jobs is not None
        runner.jobs.outbox.free_bytes = lambda _: free[0]
        runner.jobs.outbox.space_check_s = 0.0
        status = await asyncio.to_thread(agent_status, runner)
        assert status is not None
        assert status["healthy"] is False  # without a job: the status looks itself
        assert "1048576 bytes free" in status["receipts"]["outbox_error"]
        response = await asyncio.to_thread(send_job, runner)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "outbox_unavailable"
        free[0] = 1 << 40
        assert (await asyncio.to_thread(send_job, runner)).status_code == 200
        status = await asyncio.to_thread(agent_status, runner)
        assert status is not None
        assert status["healthy"] is True
        assert status["receipts"]["outbox_error"] is None
        runner.request_stop()
        return await asyncio.wait_for(task, 20)

    assert asyncio.run(scenario()) == 0
