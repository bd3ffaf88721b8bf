"""Start `provider-agent run` as a subprocess for tests, and talk to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families

from market.demo.ports import free_port
from protocol.chain.deploy import Deployment
from protocol.keys import TEST_KDF, ProviderIdentity, create_keystore, public_key_hex
from protocol.messages import Domain, JobTicket, new_job_id, request_digest, sign
from provider_agent.jobs.tickets import TICKET_HEADER, encode_ticket_header

REPO = Path(__file__).resolve().parents[3]
AGENT = REPO / ".venv" / "bin" / "provider-agent"
PASSPHRASE = "correct horse battery staple"


@dataclass
class AgentProcess:
    """A running `provider-agent run` and what it was given."""

    process: subprocess.Popen[bytes]
    identity: ProviderIdentity
    market_key: SigningKey
    domain: Domain
    model: str
    data_dir: Path
    port: int
    log_path: Path
    env: dict[str, str]
    """The environment it runs with (other `provider-agent` commands take the same)."""
    engine_pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The job endpoint's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def status_headers(self) -> dict[str, str]:
        """What authorises reading its status and metrics (`listen.status_token`)."""
        token = self.env.get("AGENT_LISTEN__STATUS_TOKEN")
        return {} if token is None else {"authorization": f"Bearer {token}"}

    def status(self) -> dict[str, Any] | None:
        """`GET /agent/status`, or `None` while it does not answer."""
        try:
            response = httpx.get(f"{self.url}/agent/status", headers=self.status_headers, timeout=2)
        except httpx.HTTPError:
            return None
        result: dict[str, Any] = response.json()
        return result

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """`GET /metrics`, parsed: each sample's value by its name and sorted labels."""
        response = httpx.get(f"{self.url}/metrics", headers=self.status_headers, timeout=5)
        response.raise_for_status()
        assert response.headers["content-type"].startswith("text/plain; version=")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def wait_until(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait for `check()`, failing with the agent's log if it does not hold in time."""
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited ({self.process.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached in {timeout_s} s\n{self.log()}")
            time.sleep(0.1)

    def wait_healthy(self, timeout_s: float = 60) -> dict[str, Any]:
        """Wait until the agent serves and its engine is healthy; its status."""

        def healthy() -> bool:
            status = self.status()
            return status is not None and status["engine"]["state"] == "healthy"

        self.wait_until(healthy, timeout_s, "agent healthy")
        status = self.status()
        assert status is not None
        if status["engine"]["pid"] is not None:
            self.engine_pids.append(status["engine"]["pid"])
        return status

    def log(self) -> str:
        """What the agent printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def job(
        self, body: dict[str, Any], *, timeout_s: float = 60, path: str = "/jobs/chat/completions"
    ) -> httpx.Response:
        """Send one job with a ticket the market key signed."""
        raw = json.dumps(body).encode()
        now = int(time.time() * 1000)
        ticket = JobTicket(
            job_id=new_job_id(),
            provider=self.identity.address,
            request_digest=request_digest(raw),
            model=self.model,
            max_tokens=int(body.get("max_tokens", 16)),
            issued_at=now,
            expires_at=now + 120_000,
            domain=self.domain,
        )
        headers = {
            TICKET_HEADER: encode_ticket_header(sign(ticket, self.market_key)),
            "content-type": "application/json",
        }
        return httpx.post(f"{self.url}{path}", content=raw, headers=headers, timeout=timeout_s)

    def terminate(self, timeout_s: float) -> int:
        """SIGTERM, then the exit code (failing if it takes longer than `timeout_s`)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"agent did not exit in {timeout_s} s\n{self.log()}") from exc


@contextmanager
def running_agent(
    tmp_path: Path,
    *,
    engine_command: list[str] | None,
    engine_url: str,
    model: str,
    model_digest: str,
    market_url: str | None,
    domain: Domain,
    with_deployment: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Iterator[AgentProcess]:
    """`provider-agent run` with a fresh keystore and the given engine and market."""
    identity_path = tmp_path / "keystore.json"
    identity = create_keystore(identity_path, PASSPHRASE, kdf_cost=TEST_KDF)
    market_key = SigningKey.generate()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env.update(
        {
            "AGENT_DATA_DIR": str(tmp_path / "data"),
            "AGENT_KEYSTORE": str(identity_path),
            "AGENT_PASSPHRASE": PASSPHRASE,
            "AGENT_VLLM__URL": engine_url,
            "AGENT_VLLM__SERVED_MODEL": model,
            "AGENT_VLLM__MODEL_DIGEST": model_digest,
            "AGENT_MARKET_PUBLIC_KEY": public_key_hex(market_key),
            "AGENT_LISTEN__PORT": str(port),
            # the market takes integer prices only ("auto" needs a measured calibration)
            "AGENT_OFFER__PRICE_IN_PER_MTOK": "100000",
            "AGENT_OFFER__PRICE_OUT_PER_MTOK": "400000",
            "AGENT_RUN__ATTESTATION_WINDOW_S": "0.5",
            "AGENT_RUN__HEARTBEAT_INTERVAL_S": "0.3",
            "AGENT_RUN__SHUTDOWN_GRACE_S": "10",
            "AGENT_RUN__FLUSH_TIMEOUT_S": "5",
            "AGENT_RUN__ENGINE_STOP_GRACE_S": "10",
        }
    )
    if engine_command is not None:
        env["AGENT_VLLM__COMMAND"] = json.dumps(engine_command)
    if market_url is not None:
        env["AGENT_MARKET_URL"] = market_url
    if with_deployment:
        deployment = tmp_path / "deployment.json"
        Deployment(
            chain_id=domain.chain_id,
            payment_token="0x" + "11" * 20,
            network_token="0x" + "22" * 20,
            settlement=domain.settlement_contract,
            block=1,
        ).save(deployment)
        env["AGENT_DEPLOYMENT_FILE"] = str(deployment)
    env.update(extra_env or {})
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [str(AGENT), "run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    agent = AgentProcess(
        process, identity, market_key, domain, model, tmp_path / "data", port, log_path, env
    )
    try:
        yield agent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in agent.engine_pids:  # an engine a killed agent left behind
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if os.environ.get("AGENT_TEST_ECHO_LOG"):
            sys.stderr.write(agent.log())
