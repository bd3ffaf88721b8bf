"""`provider-agent run` as a real process: fake engine, market double, SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from market.demo.ports import free_port
from provider_agent.attestations import AttestationLog
from tests.provider_agent.run.agent_process import AGENT, AgentProcess, running_agent
from tests.provider_agent.run.market_double import DOMAIN, MarketDouble, running_market

UPSTREAM = Path(__file__).resolve().parents[2] / "support" / "openai_upstream.py"
DIGEST = "0x" + "ab" * 32
MODEL = "tiny-llama"
STATUS_TOKEN = "status-token-of-this-rig"


@contextmanager
def attached(
    tmp_path: Path,
    engine_port: int,
    *,
    with_deployment: bool = True,
    market_down: bool = False,
    refuse_registrations: tuple[int, str] | None = None,
) -> Iterator[tuple[MarketDouble, AgentProcess]]:
    """A market double (answering every post 503 when `market_down`; refusing registrations
    with `refuse_registrations`' status and code) and `provider-agent run` attached to the
    engine on `engine_port`."""
    with running_market() as market:
        market.fail_all = market_down
        if refuse_registrations is not None:
            market.refuse_registrations, market.refusal_code = refuse_registrations
        with running_agent(
            tmp_path,
            engine_command=None,
            engine_url=f"http://127.0.0.1:{engine_port}",
            model=MODEL,
            model_digest=DIGEST,
            market_url=market.url,
            domain=DOMAIN,
            with_deployment=with_deployment,
        ) as agent:
            yield market, agent


def registered(agent: AgentProcess, context_length: int | None) -> dict[str, Any]:
    """The agent's status, checked to say it registered `context_length` with no error."""
    status = agent.status()
    assert status is not None
    assert status["registration"] == {
        "registered": True,
        "context_length": context_length,
        "last_error": None,
    }
    return status


def alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_serves_jobs_reports_to_the_market_and_exits_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    engine_port = free_port()
    command = [sys.executable, str(UPSTREAM), "--port", str(engine_port), "--max-model-len", "4096"]
    engine_url = f"http://127.0.0.1:{engine_port}"
    # the outbox's answered-ids file cannot be read (a directory stands in its place): every
    # receipt sync fails, and the agent serves on
    (tmp_path / "data" / "receipts-sent.jsonl").mkdir(parents=True)
    with (
        running_market() as market,
        running_agent(
            tmp_path,
            engine_command=command,
            engine_url=engine_url,
            model=MODEL,
            model_digest=DIGEST,
            market_url=market.url,
            domain=DOMAIN,
            extra_env={"AGENT_LISTEN__STATUS_TOKEN": STATUS_TOKEN},
        ) as agent,
    ):
        status = agent.wait_healthy()
        # the status and the metrics ask for the token; the job endpoint does not
        for path in ("/agent/status", "/metrics"):
            for headers in ({}, {"authorization": "Bearer not-the-token"}):
                refused = httpx.get(f"{agent.url}{path}", headers=headers, timeout=5)
                assert refused.status_code == 401, (path, refused.text)
                assert refused.headers["www-authenticate"] == "Bearer"
                assert refused.json()["error"]["code"] == "unauthorized"
        engine_pid = status["engine"]["pid"]
        assert engine_pid is not None
        engine_environ = Path(f"/proc/{engine_pid}/environ").read_bytes().split(b"\0")
        assert not [name for name in engine_environ if name.startswith(b"AGENT_")]
        assert any(name.startswith(b"PATH=") for name in engine_environ)
        assert (agent.data_dir / "vllm.log").exists()

        def sync_failed() -> bool:
            error = (agent.status() or {}).get("receipts", {}).get("last_error")
            return error is not None and "IsADirectoryError" in error

        agent.wait_until(sync_failed, 20, "the receipt sync to report the unreadable file")

        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        response = agent.job(body)
        assert response.status_code == 200, response.text
        receipt = response.json()["receipt"]["message"]
        assert receipt["completion_tokens"] == 5
        assert receipt["provider"] == agent.identity.address

        agent.wait_until(lambda: len(market.heartbeats) >= 2, 20, "two heartbeats")
        agent.wait_until(lambda: len(market.attestations) >= 2, 20, "two attestations")
        assert len(market.registrations) == 1
        metrics = agent.metrics()
        assert metrics["agent_healthy", ()] == 1
        assert metrics["agent_engine_state", (("state", "healthy"),)] == 1
        assert metrics["agent_engine_state", (("state", "unhealthy"),)] == 0
        assert metrics["agent_registered", ()] == 1
        assert metrics["agent_registered_context_length", ()] == 4096
        assert metrics["agent_heartbeats_sent_total", ()] >= 2
        assert metrics["agent_attestation_head_seq", ()] >= 1
        served = (("energy_method", "unmeasured"), ("status", "complete"))
        assert metrics["agent_receipts_total", served] == 1
        assert metrics["agent_tokens_total", (("kind", "completion"),)] == 5
        assert metrics["agent_tokens_total", (("kind", "prompt"),)] == receipt["prompt_tokens"]
        # no meter here: the receipt says unmeasured, and no joules are made up
        assert not [name for name, _ in metrics if name == "agent_receipt_energy_joules_total"]
        assert not [name for name, _ in metrics if name == "agent_attested_energy_joules_total"]
        assert metrics["agent_attestations_signed_total", ()] >= 2
        assert metrics["agent_jobs_in_flight", ()] == 0
        assert metrics["agent_outbox_writable", ()] == 1
        assert metrics["agent_receipt_sync_failing", ()] == 1  # the unreadable file above
        assert metrics["process_cpu_seconds_total", ()] > 0
        # `provider-agent status` beside it: the running agent's line, and the unreadable file
        # marked, not a crash
        shown_by = subprocess.run(
            [str(AGENT), "status"],
            env={**agent.env, "COLUMNS": "400"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown_by.returncode == 0, shown_by.stdout + shown_by.stderr
        shown = shown_by.stdout
        assert (
            "healthy: engine healthy, registered (context length 4096), 0 of 8 jobs in flight;"
            f" served since start: receipts 1, tokens {receipt['prompt_tokens']} prompt + 5"
            " completion, energy not measured"
        ) in shown
        sent = agent.data_dir / "receipts-sent.jsonl"
        assert f"unavailable: cannot read {sent}: Is a directory" in shown
        wrong_token = {**agent.env, "AGENT_LISTEN__STATUS_TOKEN": "x" * 16, "COLUMNS": "400"}
        shown = subprocess.run(
            [str(AGENT), "status"], env=wrong_token, capture_output=True, text=True, timeout=60
        ).stdout
        assert "/agent/status answered 401: listen.status_token is not the agent's" in shown
        # the context the engine reports serving (vLLM's max_model_len), read from the engine
        assert market.registrations[0]["message"]["context_length"] == 4096
        assert market.refused == []
        generated = sum(
            a.tokens.generation_tokens_end - a.tokens.generation_tokens_start
            for a in market.attestations
        )
        assert generated in (0, 5)  # the job may fall before the first window

        # a streamed job in flight when SIGTERM arrives still completes
        httpx.post(f"{engine_url}/_control", json={"delay_ms": 150}).raise_for_status()
        results: dict[str, Any] = {}

        def slow_job() -> None:
            streamed = dict(body, stream=True, max_tokens=8)
            results["response"] = agent.job(streamed)

        thread = threading.Thread(target=slow_job)
        thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        code = agent.terminate(timeout_s=30)
        elapsed = time.monotonic() - started
        thread.join(timeout=30)
        assert code == 0, agent.log()
        assert elapsed < 25
        streamed_response = results["response"]
        assert streamed_response.status_code == 200
        assert "event: receipt" in streamed_response.text
        assert streamed_response.text.rstrip().endswith("data: [DONE]")
        assert not alive(engine_pid), "the engine outlived the agent"
        assert AttestationLog(agent.data_dir).unsent() == []
        assert market.refused == []


def test_run_attaches_to_a_running_engine_and_takes_the_domain_from_the_market(
    tmp_path: Path,
) -> None:
    """From `GET /market`: the market double's `GET /health` says its chain node is down. The
    engine reports no context length, and the registration says none."""
    from tests.support.openai_upstream import start_upstream

    upstream = start_upstream(max_model_len=None)
    try:
        with attached(tmp_path, upstream.port, with_deployment=False) as (market, agent):
            status = agent.wait_healthy()
            assert status["engine"]["pid"] is None
            agent.wait_until(lambda: len(market.attestations) >= 1, 20, "an attestation")
            agent.wait_until(lambda: len(market.registrations) == 1, 20, "a registration")
            assert market.registrations[0]["message"]["context_length"] is None
            domain = market.registrations[0]["message"]["domain"]
            assert domain == {
                "chain_id": DOMAIN.chain_id,
                "settlement_contract": DOMAIN.settlement_contract,
            }
            assert agent.terminate(timeout_s=30) == 0, agent.log()
            assert upstream.process.poll() is None  # an attached engine is left running
    finally:
        upstream.stop()


def test_an_engine_restarted_with_another_context_length_is_registered_again(
    tmp_path: Path,
) -> None:
    """An attached engine its owner restarts with another `--max-model-len`: the agent
    registers again with the new context length, once, and heartbeats go on."""
    from tests.support.openai_upstream import start_upstream

    upstream = start_upstream(max_model_len=4096)
    try:
        with attached(tmp_path, upstream.port) as (market, agent):
            agent.wait_healthy()
            agent.wait_until(lambda: len(market.registrations) == 1, 20, "a registration")
            assert market.registrations[0]["message"]["context_length"] == 4096
            upstream.stop()

            def unhealthy() -> bool:
                state = (agent.status() or {}).get("engine", {}).get("state")
                return bool(state == "unhealthy")

            agent.wait_until(unhealthy, 20, "the agent to see the engine gone")
            upstream = start_upstream(max_model_len=1024, port=upstream.port)
            agent.wait_until(lambda: len(market.registrations) == 2, 20, "a second registration")
            second = market.registrations[1]["message"]
            assert second["context_length"] == 1024
            assert second["issued_at"] > market.registrations[0]["message"]["issued_at"]
            agent.wait_healthy()
            registered(agent, context_length=1024)
            beats = len(market.heartbeats)
            agent.wait_until(lambda: len(market.heartbeats) > beats, 20, "a heartbeat")
            assert len(market.registrations) == 2  # the same context is not registered again
            assert market.refused == []
            assert agent.terminate(timeout_s=30) == 0, agent.log()
    finally:
        upstream.stop()


def test_a_registration_refused_for_good_stops_the_heartbeats(tmp_path: Path) -> None:
    """The engine comes back with another context length and the market refuses the new
    registration (422): the agent stops its heartbeats, so the offer the market still holds,
    with the old context length, leaves routing, and it does not try again."""
    from tests.support.openai_upstream import start_upstream

    upstream = start_upstream(max_model_len=4096)
    try:
        with attached(tmp_path, upstream.port) as (market, agent):
            agent.wait_healthy()
            agent.wait_until(lambda: len(market.heartbeats) >= 2, 20, "heartbeats")
            market.refuse_registrations = 422
            upstream.stop()
            upstream = start_upstream(max_model_len=1024, port=upstream.port)
            agent.wait_until(lambda: market.refused != [], 30, "a refused registration")
            assert market.refused == [("/providers/register", 422, "invalid_offer")]
            status = agent.wait_healthy()
            assert status["registration"]["registered"] is False
            assert "422" in status["registration"]["last_error"]
            assert agent.metrics()["agent_registered", ()] == 0
            beats = len(market.heartbeats)
            time.sleep(2.5)  # eight heartbeat intervals, and one probe of the engine more
            assert len(market.heartbeats) == beats
            assert len(market.registrations) == 1
            assert len(market.refused) == 1  # a refusal for good is not sent again
            assert agent.terminate(timeout_s=30) == 0, agent.log()
    finally:
        upstream.stop()


@pytest.mark.parametrize(
    "refusal", [(422, "message_not_yet_valid"), (410, "message_expired")], ids=["ahead", "behind"]
)
def test_a_registration_refused_for_the_clock_is_sent_again(
    tmp_path: Path, refusal: tuple[int, str]
) -> None:
    """A rig whose clock is off when it starts (time sync not done yet): the market refuses
    the registration as not yet valid or expired. A registration is signed afresh each time,
    so the agent tries again, and is registered once the clock is right."""
    from tests.support.openai_upstream import start_upstream

    upstream = start_upstream()
    try:
        with attached(tmp_path, upstream.port, refuse_registrations=refusal) as (market, agent):
            agent.wait_until(lambda: len(market.refused) >= 2, 20, "a second try")
            status = agent.status()
            assert status is not None
            assert status["registration"]["registered"] is False
            assert refusal[1] in status["registration"]["last_error"]
            market.refuse_registrations = None  # the clock is right now
            agent.wait_until(lambda: len(market.registrations) == 1, 20, "the registration")
            agent.wait_until(lambda: len(market.heartbeats) >= 1, 20, "a heartbeat")
            assert agent.terminate(timeout_s=30) == 0, agent.log()
    finally:
        upstream.stop()


def test_a_market_that_lost_the_registration_gets_it_again(tmp_path: Path) -> None:
    """A heartbeat answered 404 `provider_not_found` (the market's database was reset, say):
    the agent registers again, and its heartbeats are taken again."""
    from tests.support.openai_upstream import start_upstream

    upstream = start_upstream()
    try:
        with attached(tmp_path, upstream.port) as (market, agent):
            agent.wait_healthy()
            agent.wait_until(lambda: len(market.registrations) == 1, 20, "a registration")
            market.forget()
            agent.wait_until(lambda: len(market.registrations) == 2, 20, "a second registration")
            assert market.refused[0][:2] == ("/providers/heartbeat", 404)
            beats = len(market.heartbeats)
            agent.wait_until(lambda: len(market.heartbeats) > beats + 1, 20, "heartbeats again")
            status = registered(agent, context_length=2048)
            assert status["heartbeats"]["last_error"] is None
            assert len(market.registrations) == 2
            assert agent.terminate(timeout_s=30) == 0, agent.log()
    finally:
        upstream.stop()


def test_run_refuses_without_the_market_key(tmp_path: Path) -> None:
    with running_agent(
        tmp_path,
        engine_command=None,
        engine_url="http://127.0.0.1:9",
        model=MODEL,
        model_digest=DIGEST,
        market_url=None,
        domain=DOMAIN,
        extra_env={"AGENT_MARKET_PUBLIC_KEY": ""},
    ) as agent:
        code = agent.process.wait(timeout=60)
        assert code == 2, agent.log()
        assert "market_public_key" in agent.log()


def test_run_exits_1_when_the_engine_never_gets_ready(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; sys.exit(4)"]
    with running_agent(
        tmp_path,
        engine_command=command,
        engine_url=f"http://127.0.0.1:{free_port()}",
        model=MODEL,
        model_digest=DIGEST,
        market_url=None,
        domain=DOMAIN,
    ) as agent:
        code = agent.process.wait(timeout=60)
        assert code == 1, agent.log()
        assert "exited with 4" in agent.log()


def test_sigterm_while_the_engine_starts_exits_0_and_stops_the_engine(tmp_path: Path) -> None:
    marker = tmp_path / "engine.pid"
    script = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    with running_agent(
        tmp_path,
        engine_command=[sys.executable, "-c", script],
        engine_url=f"http://127.0.0.1:{free_port()}",
        model=MODEL,
        model_digest=DIGEST,
        market_url=None,
        domain=DOMAIN,
    ) as agent:
        agent.wait_until(lambda: marker.exists() and marker.read_text() != "", 30, "engine up")
        engine_pid = int(marker.read_text())
        agent.engine_pids.append(engine_pid)
        assert agent.terminate(timeout_s=30) == 0, agent.log()
        assert not alive(engine_pid)


def test_a_port_in_use_stops_run_before_the_engine_starts(tmp_path: Path) -> None:
    marker = tmp_path / "engine-started"
    script = f"open({str(marker)!r}, 'w').close()"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with running_agent(
            tmp_path,
            engine_command=[sys.executable, "-c", script],
            engine_url=f"http://127.0.0.1:{free_port()}",
            model=MODEL,
            model_digest=DIGEST,
            market_url=None,
            domain=DOMAIN,
            extra_env={"AGENT_LISTEN__PORT": str(port)},
        ) as agent:
            code = agent.process.wait(timeout=60)
            log = agent.log()
    assert code == 1, log
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in log
    assert "Traceback" not in log
    assert not marker.exists()


def test_a_registration_the_market_could_not_take_at_start_is_retried(tmp_path: Path) -> None:
    from tests.support.openai_upstream import start_upstream

    upstream = start_upstream()
    try:
        # the market is down when the agent starts
        with attached(tmp_path, upstream.port, market_down=True) as (market, agent):
            agent.wait_healthy()

            def refused() -> bool:
                error = (agent.status() or {}).get("registration", {}).get("last_error")
                return error is not None and "503" in error

            agent.wait_until(refused, 20, "a failed registration")
            market.fail_all = False
            agent.wait_until(lambda: len(market.registrations) == 1, 30, "a registration")
            registered(agent, context_length=2048)
            assert agent.terminate(timeout_s=30) == 0, agent.log()
    finally:
        upstream.stop()


def test_run_refuses_to_start_an_engine_where_one_already_answers(tmp_path: Path) -> None:
    from tests.support.openai_upstream import start_upstream

    left_running = start_upstream()
    marker = tmp_path / "engine-started"
    try:
        with running_agent(
            tmp_path,
            engine_command=[sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"],
            engine_url=f"http://127.0.0.1:{left_running.port}",
            model=MODEL,
            model_digest=DIGEST,
            market_url=None,
            domain=DOMAIN,
        ) as agent:
            code = agent.process.wait(timeout=60)
            log = agent.log()
        assert code == 1, log
        assert f"a server already answers on http://127.0.0.1:{left_running.port}" in log
        assert not marker.exists()
        assert left_running.process.poll() is None  # not ours: left alone
    finally:
        left_running.stop()
