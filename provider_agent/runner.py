"""`provider-agent run`: the engine, the job endpoint, heartbeats and attestations in one loop.

Order at start: bind the job endpoint's address (a port in use stops `run` before the engine
starts); supervise vLLM until it serves the configured model; serve the job
endpoint (uvicorn in this event loop); announce the offer to the market (retried with backoff
while it does not answer);
then heartbeats, attestations and the receipt sync (`provider_agent.receipt_sync`) run until
SIGTERM or SIGINT. Shutdown: stop accepting
jobs, let in-flight jobs finish (up to `run.shutdown_grace_s`), flush queued attestations
(up to `run.flush_timeout_s`), stop vLLM (SIGTERM, then SIGKILL), return 0. A part that
ends by itself (the job server, the engine watch, the attestation loop, heartbeats, the
receipt sync: each runs until stopped) is logged, the rest shut down the same way, and `run`
returns 1, so that a service manager's `Restart=on-failure` starts the agent again.

The market's ticket public key comes from `market_public_key` (`AGENT_MARKET_PUBLIC_KEY`). The
market publishes it at `GET /market`, but the agent does not take it from there by itself: it
is the key that authorises work on this rig, so the operator pins it in the config. The
domain (chain id, Settlement contract) comes from `deployment_file` when set, else from the
market's `GET /market`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from protocol.chain.deploy import Deployment
from protocol.keys import ProviderIdentity
from protocol.messages import Domain
from provider_agent.attestations import AttestationBuilder, AttestationLog, AttestationLoop
from provider_agent.config import AgentSettings, ConfigError
from provider_agent.energy import EnergyMeter
from provider_agent.engine.metrics import EngineCounters, afetch_engine_counters
from provider_agent.jobs import JobsConfig, ReceiptOutbox, create_app
from provider_agent.jobs.app import JobService
from provider_agent.jobs.outbox import MIB
from provider_agent.jobs.served import ServedTotals
from provider_agent.market_client import MarketClient, MarketError, fetch_market_domain
from provider_agent.metrics import metrics_endpoint, registry_for
from provider_agent.pricing import PricingError, with_resolved_prices
from provider_agent.receipt_sync import sync_receipts
from provider_agent.registration import signed_registration
from provider_agent.status_access import guarded
from provider_agent.supervisor import EngineState, EngineSupervisor, SupervisorConfig

log = logging.getLogger(__name__)


REGISTRATION_FINAL = frozenset({400, 401, 404, 410, 422})
"""Registration refusals that trying again cannot change (malformed, bad signature, a market
without the route, expired, an invalid offer); others (no answer, 5xx, 403 for a key not yet
bound or a stake not yet enough, 409) are retried, and so are `CLOCK_REFUSALS`."""
CLOCK_REFUSALS = frozenset({"message_expired", "message_not_yet_valid"})
"""The market's codes for a message signed by a clock far off its own (410, 422): each try
signs afresh, so one passes once the rig's clock is right (time sync done after boot)."""
PROVIDER_NOT_FOUND = "provider_not_found"
"""The market's code for a heartbeat from a provider it holds no registration of."""


class ListenError(Exception):
    """The job endpoint's address cannot be bound (in use, or not this machine's)."""


def bind_listener(host: str, port: int) -> socket.socket:
    """The job endpoint's socket, bound before the engine starts so that a port in use is
    found at once; `ListenError` saying why when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return listener


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass(frozen=True)
class RunPlan:
    """What `run` needs beyond the settings, resolved before anything starts."""

    served_model: str
    model_digest: str
    market_public_key: str
    domain: Domain


async def resolve_plan(settings: AgentSettings, http: httpx.AsyncClient) -> RunPlan:
    """Check the settings `run` needs; `ConfigError` naming what is missing."""
    missing = []
    if settings.vllm.served_model is None:
        missing.append("vllm.served_model (AGENT_VLLM__SERVED_MODEL)")
    if settings.vllm.model_digest is None:
        missing.append(
            "vllm.model_digest (AGENT_VLLM__MODEL_DIGEST; `provider-agent model-digest DIR` "
            "computes it from the model's files)"
        )
    if settings.market_public_key is None:
        missing.append("market_public_key (AGENT_MARKET_PUBLIC_KEY), the market's ticket key")
    if settings.deployment_file is None and settings.market_url is None:
        missing.append("deployment_file (AGENT_DEPLOYMENT_FILE) or market_url (AGENT_MARKET_URL)")
    if missing:
        raise ConfigError(f"`run` needs: {'; '.join(missing)}")
    assert settings.vllm.served_model is not None
    assert settings.vllm.model_digest is not None
    assert settings.market_public_key is not None
    if settings.deployment_file is not None:
        try:
            deployment = Deployment.load(settings.deployment_file)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read {settings.deployment_file}: {exc}") from exc
        domain = Domain(chain_id=deployment.chain_id, settlement_contract=deployment.settlement)
    else:
        assert settings.market_url is not None
        try:
            domain = await fetch_market_domain(http, settings.market_url)
        except MarketError as exc:
            raise ConfigError(f"{exc}; or set deployment_file") from exc
    return RunPlan(
        served_model=settings.vllm.served_model,
        model_digest=settings.vllm.model_digest,
        market_public_key=settings.market_public_key,
        domain=domain,
    )


class AgentRunner:
    """Everything `provider-agent run` runs; `request_stop` ends it cleanly."""

    def __init__(
        self,
        settings: AgentSettings,
        identity: ProviderIdentity,
        meter: EnergyMeter,
        plan: RunPlan,
        *,
        sample_s: float = 1.0,
    ) -> None:
        """Build the parts; nothing starts until `run`."""
        self.settings = settings
        self.identity = identity
        self.meter = meter
        self.plan = plan
        run = settings.run
        self.data_dir = settings.data_dir
        command = tuple(settings.vllm.command) if settings.vllm.command else None
        self.supervisor = EngineSupervisor(
            SupervisorConfig(
                url=settings.vllm.url,
                command=command,
                served_model=plan.served_model,
                log_path=self.data_dir / "vllm.log",
                startup_timeout_s=run.engine_startup_timeout_s,
                stop_grace_s=run.engine_stop_grace_s,
            )
        )
        self.engine_http = httpx.AsyncClient(base_url=settings.vllm.url, timeout=5.0)
        self.market: MarketClient | None = None
        if settings.market_url is not None:
            self.market = MarketClient(settings.market_url, identity, plan.domain)
        self.store = AttestationLog(self.data_dir)
        info = meter.describe()
        builder = AttestationBuilder(
            provider=identity.address,
            domain=plan.domain,
            signing_key=identity.signing_key,
            log_store=self.store,
            driver_version=info.driver_version,
            declared_gpu_name=settings.offer.gpu,
        )
        self.attestations = AttestationLoop(
            builder=builder,
            meter=meter,
            counters=self._counters,
            market=self.market,
            window_s=run.attestation_window_s,
            sample_s=sample_s,
            archive_after=run.attestation_archive_after,
            retention_days=run.retention_days,
        )
        self.registered = False
        self.registered_context_length: int | None = None
        self.registration_lost: str | None = None
        """Why the registration must be sent again (set by a heartbeat the market refused as
        from an unknown provider; `_registration_watch` sends it)."""
        self.registration_error: str | None = None
        self.heartbeats_sent = 0
        self.heartbeat_error: str | None = None
        self.receipts_answered: Counter[str] = Counter()
        self.receipt_sync_error: str | None = None
        self._stop = asyncio.Event()
        self.server: _Server | None = None
        self.jobs: JobService | None = None

    async def _counters(self) -> EngineCounters:
        return await afetch_engine_counters(self.engine_http, self.plan.served_model)

    def request_stop(self) -> None:
        """Begin a clean shutdown."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """What `GET /agent/status` shows."""
        head = self.store.last()
        outbox_error, in_flight, served = None, 0, ServedTotals()
        if self.jobs is not None:
            self.jobs.outbox.check_space()
            outbox_error = self.jobs.outbox.error
            in_flight, served = self.jobs.slots.in_use, self.jobs.issuer.served
        return {
            "healthy": self.supervisor.state is EngineState.healthy and outbox_error is None,
            "engine": {
                "state": str(self.supervisor.state),
                "restarts": self.supervisor.restarts,
                "last_error": self.supervisor.last_error,
                "pid": self.supervisor.pid,
            },
            "attestations": {
                "signed": self.attestations.produced,
                "energy_millijoules": dict(sorted(self.attestations.energy_mj.items())),
                "head_seq": None if head is None else head.message.seq,
                "unsent": len(self.store.unsent()),
                "send_failures": self.attestations.send_failures,
                "write_error": self.attestations.write_error,
                "set_aside": self.attestations.set_aside,
                "last_refusal": self.attestations.last_refusal,
            },
            "registration": {
                "registered": self.registered,
                "context_length": self.registered_context_length,
                "last_error": self.registration_error,
            },
            "heartbeats": {"sent": self.heartbeats_sent, "last_error": self.heartbeat_error},
            "jobs": {
                "in_flight": in_flight,
                "max_concurrency": self.settings.offer.max_concurrency,
                "served": served.as_status(),
            },
            "receipts": {
                "answered": dict(self.receipts_answered),
                "last_error": self.receipt_sync_error,
                "outbox_error": outbox_error,
            },
            "stopping": self._stop.is_set(),
        }

    def build_app(self) -> Starlette:
        """The job endpoint plus `GET /agent/status` and `GET /metrics` (Prometheus)."""
        config = JobsConfig(
            upstream_url=f"{self.settings.vllm.url}/v1",
            market_public_key=self.plan.market_public_key,
            domain=self.plan.domain,
            provider_address=self.identity.address,
            served_model=self.plan.served_model,
            model_digest=self.plan.model_digest,
            data_dir=self.data_dir,
            max_concurrency=self.settings.offer.max_concurrency,
            outbox_min_free_bytes=self.settings.data_dir_min_free_mib * MIB,
        )
        app = create_app(config, self.identity.signing_key, self.meter)
        self.jobs = app.state.jobs

        async def agent_status(_: Request) -> JSONResponse:
            return JSONResponse(self.status())

        token = self.settings.listen.status_token
        app.add_route("/agent/status", guarded(agent_status, token), methods=["GET"])
        metrics = metrics_endpoint(registry_for(self.status))
        app.add_route("/metrics", guarded(metrics, token), methods=["GET"])
        return app

    async def _register(self) -> None:
        """Announce the offer, with the context length the engine reports serving, retrying
        with backoff (1 s doubling to 60 s) while the market does not answer or answers with a
        refusal that may pass (`REGISTRATION_FINAL`)."""
        assert self.market is not None
        try:  # the market takes integer prices only: "auto" becomes the measured floor
            settings = with_resolved_prices(self.settings)
        except PricingError as exc:
            self.registration_error = f"not registering the offer: {exc}"
            log.warning("%s", self.registration_error)
            return
        delay = 1.0
        while True:
            context_length = self.supervisor.context_length
            try:
                await self.market.register(
                    signed_registration(
                        settings, self.identity, self.plan.domain, context_length=context_length
                    )
                )
            except MarketError as exc:
                self.registration_error = str(exc)
                if exc.status in REGISTRATION_FINAL and exc.code not in CLOCK_REFUSALS:
                    log.error(
                        "the market refused the registration: %s; no heartbeats are sent, so "
                        "an offer it holds from before leaves routing",
                        exc,
                    )
                    self.registered = False
                    return
                log.warning("could not register with the market, again in %.0f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            self.registered, self.registration_error = True, None
            self.registered_context_length = context_length
            log.info("registered the offer with the market (context length %s)", context_length)
            return

    async def _registration_watch(self) -> None:
        """Register again, while the engine is healthy, when the market has lost the
        registration (it answered a heartbeat `provider_not_found`: its database was reset,
        say) or the engine's context length is no longer the registered one (an engine
        restarted with another `--max-model-len`). The one task that registers after the
        first registration, so two never race."""
        while True:
            await asyncio.sleep(self.supervisor.config.poll_interval_s)
            if not self.registered or self.supervisor.state is not EngineState.healthy:
                continue
            now = self.supervisor.context_length
            why = self.registration_lost
            if why is None and now != self.registered_context_length:
                why = (
                    f"the engine now serves a context length of {now}"
                    f" (the offer says {self.registered_context_length})"
                )
            if why is not None:
                log.warning("%s: registering again", why)
                self.registration_lost = None
                await self._register()

    async def _heartbeats(self) -> None:
        """A heartbeat every interval while the offer is registered and the engine healthy.

        Not before the first registration, nor after one the market refused for good: a
        heartbeat would keep in routing an offer the market holds from an earlier
        registration (other prices, a context length the engine no longer serves)."""
        assert self.market is not None
        while True:
            if self.registered and self.supervisor.state is EngineState.healthy:
                try:
                    await self.market.heartbeat()
                    self.heartbeats_sent += 1
                    self.heartbeat_error = None
                except MarketError as exc:
                    self.heartbeat_error = str(exc)
                    log.warning("heartbeat failed: %s", exc)
                    if exc.code == PROVIDER_NOT_FOUND and self.registered:
                        self.registration_lost = "the market no longer knows this provider"
            await asyncio.sleep(self.settings.run.heartbeat_interval_s)

    async def _receipt_syncs(self) -> None:
        assert self.market is not None
        outbox = ReceiptOutbox(self.data_dir)
        while True:
            try:
                result = await sync_receipts(
                    outbox, self.market, retention_days=self.settings.run.retention_days
                )
                self.receipts_answered.update(result.states)
                self.receipt_sync_error = result.error
            except Exception as exc:  # an unreadable outbox must not stop the agent serving
                log.exception("receipt sync failed")
                self.receipt_sync_error = repr(exc)
            await asyncio.sleep(self.settings.run.receipt_sync_interval_s)

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until `request_stop` (or a signal); 0 after a clean shutdown."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        if self.market is None and (unsent := ReceiptOutbox(self.data_dir).count_unsent()):
            log.info("%d receipts in the outbox never answered by a market", unsent)
        listen = self.settings.listen
        listener = bind_listener(listen.host, listen.port)
        tasks: list[asyncio.Task[Any]] = []
        registration: asyncio.Task[None] | None = None
        try:
            start = asyncio.create_task(self.supervisor.start())
            stop_wait = asyncio.create_task(self._stop.wait())
            await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # stopped while the engine was starting
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await start
                return 0
            stop_wait.cancel()
            start.result()
            grace = round(self.settings.run.shutdown_grace_s)
            config = uvicorn.Config(
                self.build_app(),
                host=listen.host,
                port=listen.port,
                log_level="info",
                lifespan="on",
                timeout_graceful_shutdown=grace,
            )
            self.server = _Server(config)
            server_task = asyncio.create_task(self.server.serve(sockets=[listener]))
            tasks.append(asyncio.create_task(self.supervisor.watch()))
            tasks.append(asyncio.create_task(self.attestations.run()))
            if self.market is not None:
                registration = asyncio.create_task(self._register())  # may end: not a part
                tasks.append(asyncio.create_task(self._heartbeats()))
                tasks.append(asyncio.create_task(self._registration_watch()))
                tasks.append(asyncio.create_task(self._receipt_syncs()))
            log.info("provider agent running: jobs on http://%s:%d", listen.host, listen.port)
            stop_wait = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait(
                {server_task, stop_wait, *tasks}, return_when=asyncio.FIRST_COMPLETED
            )
            failed = _report_failed_parts(done - {stop_wait})
            stop_wait.cancel()
            # 1. stop accepting jobs; in-flight ones get up to the grace period
            self.server.should_exit = True
            try:
                await asyncio.wait_for(server_task, self.settings.run.shutdown_grace_s + 5)
            except TimeoutError:
                self.server.force_exit = True
                log.warning("jobs still running after the grace period were cut off")
            return 1 if failed else 0
        finally:
            listener.close()
            if registration is not None:
                tasks.append(registration)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # 2. flush queued attestations (bounded)
            if not await self.attestations.flush(self.settings.run.flush_timeout_s):
                log.warning(
                    "%d attestations still queued in %s; they are sent on the next start",
                    len(self.store.unsent()),
                    self.store.path,
                )
            # 3. stop the engine
            await self.supervisor.stop()
            await self.engine_http.aclose()
            if self.market is not None:
                await self.market.aclose()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)


def _report_failed_parts(ended: set[asyncio.Task[Any]]) -> bool:
    """Log each part of the agent that ended by itself (each runs until stopped); whether
    any did, which makes `run` exit 1 so that a service manager restarts it."""
    for task in ended:
        error = task.exception()
        if error is None:
            log.error("a part of the agent stopped by itself: %s", task.get_coro())
        else:
            log.error("a part of the agent failed: %r", error, exc_info=error)
    return bool(ended)


async def run_agent(settings: AgentSettings, identity: ProviderIdentity, meter: EnergyMeter) -> int:
    """Resolve the plan and run the agent until a signal; the exit code."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        plan = await resolve_plan(settings, http)
    runner = AgentRunner(settings, identity, meter, plan)
    return await runner.run()
