"""`provider-agent run` supervising a real vLLM (CPU) on the tiny model: one job end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from market.demo.ports import free_port
from market.demo.vllm_server import SERVER_ENV, SERVER_FLAGS, vllm_python
from provider_agent.engine.digest import weights_digest
from tests.provider_agent.run.agent_process import running_agent
from tests.provider_agent.run.market_double import DOMAIN, running_market
from tests.support.vllm import needs_vllm

pytestmark = needs_vllm
MODEL = "tiny-llama"


def test_run_supervises_vllm_and_serves_a_job(tmp_path: Path, tiny_model: Path) -> None:
    python = vllm_python()
    assert python is not None
    port = free_port()
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model.resolve()),
        "--served-model-name", MODEL,
        "--host", "127.0.0.1",
        "--port", str(port),
        *SERVER_FLAGS,
    ]  # fmt: skip
    with (
        running_market() as market,
        running_agent(
            tmp_path,
            engine_command=command,
            engine_url=f"http://127.0.0.1:{port}",
            model=MODEL,
            model_digest=weights_digest(tiny_model),
            market_url=market.url,
            domain=DOMAIN,
            extra_env={**SERVER_ENV, "AGENT_RUN__ATTESTATION_WINDOW_S": "2"},
        ) as agent,
    ):
        status = agent.wait_healthy(timeout_s=240)
        engine_pid = status["engine"]["pid"]
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": 12,
            "temperature": 0,
        }
        response = agent.job(body, timeout_s=120)
        assert response.status_code == 200, response.text
        answer = response.json()
        receipt = answer["receipt"]["message"]
        assert receipt["completion_tokens"] == answer["usage"]["completion_tokens"] > 0
        assert receipt["energy"]["method"] == "unmeasured"  # no NVML here
        # an attestation window covering the job shows vLLM's counters moving by its tokens
        completion = int(receipt["completion_tokens"])

        def attested() -> bool:
            total = sum(
                a.tokens.generation_tokens_end - a.tokens.generation_tokens_start
                for a in market.attestations
            )
            return total >= completion

        agent.wait_until(attested, 30, "an attestation counting the job's tokens")
        assert market.refused == []
        assert agent.terminate(timeout_s=60) == 0, agent.log()
        with pytest.raises(ProcessLookupError):
            os.kill(engine_pid, 0)
