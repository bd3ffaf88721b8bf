"""The supervisor against a real engine process: the fake OpenAI server as "vLLM"."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from market.demo.ports import free_port
from provider_agent.supervisor import (
    EngineStartError,
    EngineState,
    EngineSupervisor,
    SupervisorConfig,
    engine_environment,
)
from tests.support.openai_upstream import start_upstream

UPSTREAM = Path(__file__).resolve().parents[2] / "support" / "openai_upstream.py"


def engine_command(port: int, model: str = "tiny-llama") -> tuple[str, ...]:
    """The fake engine as a command the supervisor starts."""
    return (sys.executable, str(UPSTREAM), "--port", str(port), "--served-model", model)


def alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie we reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Wait until `check()` holds, or fail."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def state_of(supervisor: EngineSupervisor) -> EngineState:
    """The state, read through a call (so type checkers do not narrow it)."""
    return supervisor.state


def config(tmp_path: Path, port: int, **overrides: object) -> SupervisorConfig:
    base: dict[str, object] = {
        "url": f"http://127.0.0.1:{port}",
        "command": engine_command(port),
        "served_model": "tiny-llama",
        "log_path": tmp_path / "vllm.log",
        "startup_timeout_s": 30.0,
        "poll_interval_s": 0.1,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "stop_grace_s": 5.0,
    }
    base.update(overrides)
    return SupervisorConfig(**base)  # type: ignore[arg-type]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def test_starts_the_engine_restarts_it_when_killed_and_stops_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        supervisor = EngineSupervisor(config(tmp_path, free_port()))
        await supervisor.start()
        assert supervisor.state is EngineState.healthy
        first = supervisor.pid
        assert first is not None
        watch = asyncio.create_task(supervisor.watch())
        os.kill(first, signal.SIGKILL)
        await until(lambda: supervisor.restarts == 1 and supervisor.state is EngineState.healthy)
        second = supervisor.pid
        assert second is not None
        assert second != first
        # a second death is counted too
        os.kill(second, signal.SIGTERM)
        await until(lambda: supervisor.restarts == 2 and supervisor.state is EngineState.healthy)
        third = supervisor.pid
        assert third is not None
        await supervisor.stop()
        await watch
        assert state_of(supervisor) is EngineState.stopped
        assert not alive(third)

    run(scenario())
    log = (tmp_path / "vllm.log").read_text()
    assert log.count("--- starting") == 3


def test_stop_kills_an_engine_that_ignores_sigterm(tmp_path: Path) -> None:
    port = free_port()
    script = (
        "import signal, runpy, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f" sys.argv = ['u', '--port', '{port}']; runpy.run_path({str(UPSTREAM)!r},"
        " run_name='__main__')"
    )
    command = (sys.executable, "-c", script)

    async def scenario() -> None:
        supervisor = EngineSupervisor(config(tmp_path, port, command=command, stop_grace_s=0.5))
        await supervisor.start()
        pid = supervisor.pid
        assert pid is not None
        started = time.monotonic()
        await supervisor.stop()
        assert time.monotonic() - started < 5
        assert not alive(pid)

    run(scenario())


def test_wrong_model_fails_start_and_stops_the_process(tmp_path: Path) -> None:
    port = free_port()

    async def scenario() -> None:
        supervisor = EngineSupervisor(config(tmp_path, port, served_model="other-model"))
        with pytest.raises(EngineStartError, match="not 'other-model'"):
            await supervisor.start()
        assert supervisor.state is EngineState.stopped
        assert supervisor.pid is not None
        assert not alive(supervisor.pid)

    run(scenario())


def test_an_engine_that_exits_at_start_is_reported(tmp_path: Path) -> None:
    command = (sys.executable, "-c", "import sys; print('boom'); sys.exit(3)")

    async def scenario() -> None:
        supervisor = EngineSupervisor(config(tmp_path, free_port(), command=command))
        with pytest.raises(EngineStartError, match="exited with 3"):
            await supervisor.start()

    run(scenario())
    assert "boom" in (tmp_path / "vllm.log").read_text()


def test_start_gives_up_at_the_deadline(tmp_path: Path) -> None:
    async def scenario() -> None:
        supervisor = EngineSupervisor(
            config(tmp_path, free_port(), command=None, startup_timeout_s=0.5)
        )
        started = time.monotonic()
        with pytest.raises(EngineStartError, match="not ready within"):
            await supervisor.start()
        assert time.monotonic() - started < 3

    run(scenario())


def test_attach_mode_polls_health_and_leaves_the_engine_alone(tmp_path: Path) -> None:
    upstream = start_upstream()
    try:

        async def scenario() -> None:
            supervisor = EngineSupervisor(config(tmp_path, upstream.port, command=None))
            await supervisor.start()
            assert supervisor.state is EngineState.healthy
            assert supervisor.pid is None
            watch = asyncio.create_task(supervisor.watch())
            upstream.stop()
            await until(lambda: supervisor.state is EngineState.unhealthy)
            assert supervisor.last_error is not None
            assert "unreachable" in supervisor.last_error
            assert supervisor.restarts == 0
            await supervisor.stop()
            await watch

        run(scenario())
    finally:
        upstream.stop()


def test_attach_mode_keeps_the_engine_running_after_stop(tmp_path: Path) -> None:
    upstream = start_upstream()
    try:

        async def scenario() -> None:
            supervisor = EngineSupervisor(config(tmp_path, upstream.port, command=None))
            await supervisor.start()
            await supervisor.stop()

        run(scenario())
        assert upstream.process.poll() is None
    finally:
        upstream.stop()


def test_the_engine_counts_gpus_in_pci_bus_order_unless_the_owner_chose_an_order() -> None:
    agent = {"CUDA_VISIBLE_DEVICES": "1", "AGENT_PASSPHRASE": "secret", "PATH": "/usr/bin"}

    assert engine_environment(agent) == {
        "CUDA_VISIBLE_DEVICES": "1",
        "PATH": "/usr/bin",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    chosen = engine_environment({**agent, "CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    assert chosen["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
