"""`provider-agent calibrate` against the fake engine: unmeasured and counter-double meters."""

from __future__ import annotations

import asyncio
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from typer.testing import CliRunner

from provider_agent import cli
from provider_agent.calibrate import (
    CalibrationError,
    CalibrationPlan,
    LevelResult,
    load_calibration,
    run_calibration,
    verify_calibration,
)
from provider_agent.energy import (
    EnergyMeter,
    EnergyReading,
    GpuInfo,
    GpuReading,
    MeterInfo,
    UnmeasuredMeter,
)
from tests.provider_agent.calibrate.conftest import (
    CHAIN_ID,
    SETTLEMENT,
    MarketDouble,
    init_agent,
)
from tests.support.openai_upstream import UpstreamProcess

MODEL = "tiny-llama"
MAX_TOKENS = 16
STEP_MJ = 2_500_000


class CountingMeter:
    """An `EnergyMeter` double: one GPU whose counter rises by `step_mj` at every read."""

    kind = "counting-double"

    def __init__(self, step_mj: int = STEP_MJ) -> None:
        """Start the counter at 10^9 mJ."""
        self.step_mj = step_mj
        self.counter_mj = 1_000_000_000
        self.reads = 0

    @property
    def method(self) -> Literal["measured"]:
        """Claims a hardware counter."""
        return "measured"

    def describe(self) -> MeterInfo:
        """One fake GPU."""
        gpu = GpuInfo(uuid="GPU-double", name="Double H100", power_limit_mw=700_000)
        return MeterInfo(kind=self.kind, method="measured", gpus=(gpu,), driver_version="0")

    def read(self) -> EnergyReading:
        """The counter after one more step."""
        import time

        self.reads += 1
        self.counter_mj += self.step_mj
        gpu = GpuReading("GPU-double", "Double H100", self.counter_mj, 350_000, 700_000)
        return EnergyReading(
            method="measured",
            monotonic_ns=time.monotonic_ns(),
            unix_ms=time.time_ns() // 1_000_000,
            gpus=(gpu,),
        )

    def close(self) -> None:
        """Nothing to release."""


@pytest.fixture(autouse=True)
def _fake_engine(upstream: UpstreamProcess) -> None:
    # every request generates MAX_TOKENS tokens (it asks for that many), streamed slowly
    upstream.control(completion_tokens=1000, delay_ms=2)


def _base(upstream: UpstreamProcess) -> str:
    return f"http://127.0.0.1:{upstream.port}"


def _plan(*levels: int) -> CalibrationPlan:
    return CalibrationPlan(
        concurrency=levels, duration_s=1.0, warmup_s=0.3, max_tokens=MAX_TOKENS,
        sample_interval_s=0.2,
    )  # fmt: skip


def _measure(upstream: UpstreamProcess, meter: EnergyMeter, *levels: int) -> list[LevelResult]:
    async def go() -> list[LevelResult]:
        async with httpx.AsyncClient(base_url=_base(upstream), timeout=30) as http:
            return await run_calibration(http, meter, MODEL, _plan(*levels))

    return asyncio.run(go())


def test_counting_meter_gives_exact_joules_per_token(upstream: UpstreamProcess) -> None:
    meter = CountingMeter()
    [level] = _measure(upstream, meter, 4)
    assert meter.reads == 2  # once at each window boundary
    tokens = level.generation_tokens
    assert tokens > 0
    assert tokens % MAX_TOKENS == 0
    assert level.method == "measured"
    assert level.energy_mj == STEP_MJ
    expected = (Decimal(STEP_MJ) / 1000 / tokens).quantize(Decimal("0.000001"), ROUND_HALF_UP)
    assert level.joules_per_token == expected
    duration = level.window.duration_ns
    assert level.window.avg_power_mw == (2 * STEP_MJ * 10**9 + duration) // (2 * duration)
    assert level.tokens_per_s > 0
    assert Decimal(0) < level.avg_running <= 4
    assert level.requests_failed == 0


def test_unmeasured_meter_gives_none_but_measures_throughput(upstream: UpstreamProcess) -> None:
    [one, four] = _measure(upstream, UnmeasuredMeter("test: no meter"), 1, 4)
    for level in (one, four):
        assert level.joules_per_token is None
        assert level.energy_mj is None
        assert level.method == "unmeasured"
        assert level.unmeasured_reason == "test: no meter"
        assert level.window.avg_power_mw is None
        assert level.generation_tokens > 0
        expected = Decimal(level.generation_tokens) * 10**9 / level.window_ns
        assert abs(level.tokens_per_s - expected) < Decimal("0.001")
    assert four.tokens_per_s > one.tokens_per_s  # more requests in flight, more tokens/s


def test_every_request_failing_is_an_error(upstream: UpstreamProcess) -> None:
    upstream.control(status=500)
    with pytest.raises(CalibrationError, match="every request failed"):
        _measure(upstream, UnmeasuredMeter("x"), 2)


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(CalibrationError):
        CalibrationPlan(concurrency=(), duration_s=1, warmup_s=0, max_tokens=1)
    with pytest.raises(CalibrationError):
        CalibrationPlan(concurrency=(1,), duration_s=0, warmup_s=0, max_tokens=1)


def _cli_calibrate(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    upstream: UpstreamProcess,
    meter: EnergyMeter,
    *extra_env: tuple[str, str],
) -> Any:
    monkeypatch.setenv("AGENT_VLLM__URL", _base(upstream))
    for name, value in extra_env:
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "_meter", lambda settings: meter)
    args = ["calibrate", "--concurrency", "1,4", "--duration", "1", "--warmup", "0.3"]
    return runner.invoke(cli.app, [*args, "--max-tokens", str(MAX_TOKENS)])


def test_cli_unmeasured_saves_a_signed_calibration_and_tells_about_404(
    runner: CliRunner,
    agent_env: Path,
    upstream: UpstreamProcess,
    market: MarketDouble,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init_agent(runner)
    result = _cli_calibrate(
        runner, monkeypatch, upstream, UnmeasuredMeter("NVML unavailable (test)"),
        ("AGENT_MARKET_URL", market.url),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "unmeasured" in result.output
    assert "the market does not take calibrations yet (404" in result.output
    envelope = json.loads((agent_env / "calibration.json").read_text())
    message = verify_calibration(envelope)
    assert market.posted == [envelope]
    assert message["type"] == "calibration"
    assert message["version"] == 1
    assert message["domain"] == {"chain_id": CHAIN_ID, "settlement_contract": SETTLEMENT}
    assert message["model"] == MODEL  # from /v1/models: served_model is not configured
    assert message["meter"]["method"] == "unmeasured"
    assert [level["concurrency"] for level in message["levels"]] == [1, 4]
    for level in message["levels"]:
        assert level["joules_per_token"] is None
        assert level["energy"]["method"] == "unmeasured"
        assert level["energy"]["millijoules"] is None
        assert level["generation_tokens"] > 0
        assert Decimal(level["tokens_per_s"]) > 0
        tokens = level["counters"]["tokens_end"]["generation"]
        assert (
            tokens - level["counters"]["tokens_start"]["generation"] == level["generation_tokens"]
        )
    calibration = load_calibration(agent_env)
    assert calibration is not None
    assert all(level.joules_per_token is None for level in calibration.levels)


def test_cli_counting_meter_signs_exact_figures_and_posts(
    runner: CliRunner,
    agent_env: Path,
    upstream: UpstreamProcess,
    market: MarketDouble,
    deployment_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init_agent(runner)
    market.status = 201
    result = _cli_calibrate(
        runner, monkeypatch, upstream, CountingMeter(),
        ("AGENT_DEPLOYMENT_FILE", str(deployment_file)),
        ("AGENT_MARKET_URL", market.url),
        ("AGENT_VLLM__SERVED_MODEL", MODEL),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "calibration sent to the market" in result.output
    message = verify_calibration(json.loads((agent_env / "calibration.json").read_text()))
    for level in message["levels"]:
        tokens = level["generation_tokens"]
        assert level["energy"] == {
            "method": "measured",
            "millijoules": STEP_MJ,
            "duration_ns": level["energy"]["duration_ns"],
            "basis": level["energy"]["basis"],
        }
        exact = (Decimal(STEP_MJ) / 1000 / tokens).quantize(Decimal("0.000001"), ROUND_HALF_UP)
        assert level["joules_per_token"] == str(exact)
        assert (
            level["counters"]["gpu_end"][0]["energy_mj"]
            - level["counters"]["gpu_start"][0]["energy_mj"]
            == STEP_MJ
        )
        assert level["avg_power_mw"] > 0
        assert str(exact) in result.output
    calibration = load_calibration(agent_env)
    assert calibration is not None
    [one, _] = calibration.levels
    assert one.joules_per_token == Decimal(STEP_MJ) / 1000 / Decimal(one.generation_tokens)


def test_cli_without_a_domain_refuses_before_measuring(
    runner: CliRunner,
    agent_env: Path,
    upstream: UpstreamProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init_agent(runner)
    meter = CountingMeter()
    result = _cli_calibrate(runner, monkeypatch, upstream, meter)
    assert result.exit_code == 2
    assert "set deployment_file" in result.output
    assert meter.reads == 0
    assert not (agent_env / "calibration.json").exists()


def test_cli_rejects_bad_concurrency(runner: CliRunner, agent_env: Path) -> None:
    result = runner.invoke(cli.app, ["calibrate", "--concurrency", "1,x"])
    assert result.exit_code == 2
    assert "comma-separated integers" in result.output
