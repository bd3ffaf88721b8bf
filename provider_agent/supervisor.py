"""vLLM supervision: start the engine (or attach to one), wait until it serves, restart it.

With a command the supervisor starts it in its own process group (stdout and stderr to
`data_dir/vllm.log`; the agent's environment less its `AGENT_*` variables, so the keystore
passphrase stays with the agent, and with `CUDA_DEVICE_ORDER=PCI_BUS_ID` unless the owner set
it, so that CUDA numbers GPUs as NVML and the energy meter do), waits for `GET {url}/health`
with exponential backoff up to a deadline, checks that `GET {url}/v1/models` lists the
configured model, and restarts the process with backoff whenever it exits (counting restarts).
Without a command it attaches to `url` and keeps polling its health. It refuses to start a
command while a server already answers on `url`. `state` says where it stands. Each probe
that passes also reads the model's context length (`context_length`), so that an engine
restarted with another `--max-model-len` (by the agent, or by its owner when attached) is
noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import httpx

from provider_agent.energy.select import PCI_BUS_ORDER
from provider_agent.engine.models import served_context_length

log = logging.getLogger(__name__)


class EngineState(StrEnum):
    """Where the engine stands."""

    starting = "starting"
    healthy = "healthy"
    unhealthy = "unhealthy"
    restarting = "restarting"
    stopped = "stopped"


class EngineStartError(Exception):
    """The engine did not become ready before the deadline, or serves the wrong model."""


@dataclass(frozen=True)
class SupervisorConfig:
    """How to run and watch the engine.

    `url` is the engine's base URL (without `/v1`); `command` `None` attaches to it.
    """

    url: str
    command: tuple[str, ...] | None = None
    served_model: str | None = None
    log_path: Path | None = None
    startup_timeout_s: float = 900.0
    poll_interval_s: float = 2.0
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 30.0
    stop_grace_s: float = 20.0
    env: tuple[tuple[str, str], ...] = ()


AGENT_VARIABLES = "AGENT_"


def engine_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The engine's environment: the agent's, less its own `AGENT_*` settings, among them
    the keystore passphrase (`AGENT_PASSPHRASE`), which the engine must never see; with
    `CUDA_DEVICE_ORDER=PCI_BUS_ID` unless set, so that the indices in `CUDA_VISIBLE_DEVICES`
    name the same GPUs for the engine as for NVML (CUDA's default puts the fastest first)."""
    env = {name: value for name, value in environ.items() if not name.startswith(AGENT_VARIABLES)}
    env.setdefault("CUDA_DEVICE_ORDER", PCI_BUS_ORDER)
    return env


def _next_delay(delay: float, maximum: float) -> float:
    return min(delay * 2, maximum)


class EngineSupervisor:
    """Starts, watches and stops one engine process (or watches one already running)."""

    def __init__(self, config: SupervisorConfig, http: httpx.AsyncClient | None = None) -> None:
        """`http` is used for health probes (one is made if not given)."""
        self.config = config
        self.state = EngineState.stopped
        self.restarts = 0
        self.last_error: str | None = None
        self.context_length: int | None = None
        """The served model's `max_model_len`, as the last probe that passed read it (None
        when the engine does not report one, or has not been probed)."""
        self._http = http or httpx.AsyncClient(timeout=5.0)
        self._own_http = http is None
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False

    def stop_requested(self) -> bool:
        """Whether `stop` was called."""
        return self._stopping

    @property
    def pid(self) -> int | None:
        """The engine process id, while one runs."""
        return None if self._process is None else self._process.pid

    async def _spawn(self) -> None:
        command = self.config.command
        assert command is not None
        log_path = self.config.log_path
        env = {**engine_environment(os.environ), **dict(self.config.env)}
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as out:
                out.write(f"--- starting {' '.join(command)}\n".encode())
                out.flush()
                self._process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                )
        else:
            self._process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, start_new_session=True, env=env
            )
        log.info("engine started: pid %s", self._process.pid)

    async def probe(self) -> str | None:
        """`None` when `/health` answers 200 and `/v1/models` lists the model (whose context
        length it records); else why not."""
        url = self.config.url
        try:
            health = await self._http.get(f"{url}/health")
        except httpx.HTTPError as exc:
            return f"{url}/health unreachable: {exc!r}"
        if health.status_code != 200:
            return f"{url}/health answered {health.status_code}"
        if self.config.served_model is None:
            return None
        try:
            models = await self._http.get(f"{url}/v1/models")
            models.raise_for_status()
            body = models.json()
            ids = [str(entry.get("id")) for entry in body.get("data", [])]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            return f"{url}/v1/models failed: {exc!r}"
        if self.config.served_model not in ids:
            return f"the engine serves {ids}, not {self.config.served_model!r}"
        self.context_length = served_context_length(body, self.config.served_model)
        return None

    async def wait_ready(self) -> None:
        """Probe with exponential backoff until ready; `EngineStartError` at the deadline."""
        deadline = time.monotonic() + self.config.startup_timeout_s
        delay = self.config.backoff_initial_s
        while True:
            if self._process is not None and self._process.returncode is not None:
                raise EngineStartError(
                    f"the engine exited with {self._process.returncode} while starting"
                    f" (see {self.config.log_path})"
                )
            problem = await self.probe()
            if problem is None:
                self.state = EngineState.healthy
                self.last_error = None
                return
            self.last_error = problem
            if problem.startswith("the engine serves"):
                raise EngineStartError(problem)
            if time.monotonic() + delay > deadline:
                raise EngineStartError(
                    f"the engine was not ready within {self.config.startup_timeout_s} s: {problem}"
                )
            await asyncio.sleep(delay)
            delay = _next_delay(delay, self.config.backoff_max_s)

    async def start(self) -> None:
        """Start the engine (or attach to it) and wait until it serves the model."""
        self._stopping = False
        self.state = EngineState.starting
        if self.config.command is not None:
            await self._refuse_a_running_engine()
            await self._spawn()
        try:
            await self.wait_ready()
        except EngineStartError:
            await self._terminate()
            self.state = EngineState.stopped
            raise

    async def _refuse_a_running_engine(self) -> None:
        """`EngineStartError` when a server already answers on the engine's URL (one left
        running by an agent that was killed, as a rule): a second engine could not bind it,
        and the agent would serve with an engine it does not control."""
        try:
            await self._http.get(f"{self.config.url}/health")
        except httpx.HTTPError:
            return
        self.state = EngineState.stopped
        raise EngineStartError(
            f"a server already answers on {self.config.url}, so the engine cannot be started"
            " there: stop it (an engine left by an agent that was killed keeps running), or"
            " leave vllm.command unset to attach to it"
        )

    async def watch(self) -> None:
        """Run until cancelled or stopped: restart a dead engine, track health."""
        delay = self.config.backoff_initial_s
        while not self.stop_requested():
            process = self._process
            if process is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), self.config.poll_interval_s)
                if self.stop_requested():
                    return
                if process.returncode is not None:
                    delay = await self._restart(process.returncode, delay)
                    continue
            else:
                await asyncio.sleep(self.config.poll_interval_s)
                if self.stop_requested():
                    return
            problem = await self.probe()
            if problem is None:
                self.state = EngineState.healthy
                self.last_error = None
                delay = self.config.backoff_initial_s
            else:
                if self.state is EngineState.healthy:
                    log.warning("engine unhealthy: %s", problem)
                self.state = EngineState.unhealthy
                self.last_error = problem

    async def _restart(self, returncode: int, delay: float) -> float:
        self.state = EngineState.restarting
        if self._process is not None:  # children the dead engine left in its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self.restarts += 1
        self.last_error = f"the engine exited with {returncode}"
        log.warning("engine exited with %s; restart %d in %.2f s", returncode, self.restarts, delay)
        await asyncio.sleep(delay)
        delay = _next_delay(delay, self.config.backoff_max_s)
        if self._stopping:
            return delay
        try:
            await self._spawn()
            await self.wait_ready()
        except (EngineStartError, OSError) as exc:
            self.last_error = str(exc)
            log.error("engine restart failed: %s", exc)
            await self._terminate()
            self.state = EngineState.restarting
        return delay

    async def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.config.stop_grace_s)
        except TimeoutError:
            log.warning("engine ignored SIGTERM for %s s: SIGKILL", self.config.stop_grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def stop(self) -> None:
        """Stop watching; stop the engine process (SIGTERM, then SIGKILL) if we started it."""
        self._stopping = True
        await self._terminate()
        self.state = EngineState.stopped
        if self._own_http:
            await self._http.aclose()
