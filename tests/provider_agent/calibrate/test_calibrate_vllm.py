"""`provider-agent calibrate` against a real vLLM (CPU) serving the tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from market.demo.vllm_server import VllmServer, start_vllm
from provider_agent import cli
from provider_agent.calibrate import verify_calibration
from tests.provider_agent.calibrate.conftest import init_agent
from tests.support.vllm import needs_vllm

pytestmark = needs_vllm
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def vllm(tiny_model: Path) -> Iterator[VllmServer]:
    """vLLM on the tiny model."""
    with start_vllm(tiny_model, MODEL) as server:
        yield server


def test_calibrate_two_levels_on_real_vllm(
    runner: CliRunner,
    agent_env: Path,
    deployment_file: Path,
    vllm: VllmServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init_agent(runner)
    monkeypatch.setenv("AGENT_VLLM__URL", vllm.base_url)
    monkeypatch.setenv("AGENT_VLLM__SERVED_MODEL", MODEL)
    monkeypatch.setenv("AGENT_DEPLOYMENT_FILE", str(deployment_file))
    args = ["calibrate", "--concurrency", "1,8", "--duration", "3", "--warmup", "1"]
    result = runner.invoke(cli.app, [*args, "--max-tokens", "32"])
    assert result.exit_code == 0, result.output + vllm.log_tail()
    message = verify_calibration(json.loads((agent_env / "calibration.json").read_text()))
    one, eight = message["levels"]
    for level in (one, eight):
        assert level["generation_tokens"] > 0
        assert Decimal(level["tokens_per_s"]) > 0
        assert level["requests_failed"] == 0
        measured = level["energy"]["method"] != "unmeasured"
        assert (level["joules_per_token"] is not None) == measured  # never invented
    assert eight["avg_running_milli"] > one["avg_running_milli"] > 0
    assert Decimal(eight["tokens_per_s"]) > Decimal(one["tokens_per_s"])
