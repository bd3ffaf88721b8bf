"""`provider-agent doctor` against a real local HTTP server, and its checks one by one."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from market.demo.ports import free_port
from protocol.keys import ProviderIdentity
from provider_agent import cli
from provider_agent.attestations import AttestationBuilder, AttestationLog, ChainHead
from provider_agent.config import VllmSettings
from provider_agent.doctor import (
    Check,
    check_data_dir_space,
    check_energy_meter,
    check_gpu_order,
    check_market,
    check_records,
    check_vllm_health,
    check_vllm_model,
)
from provider_agent.energy import (
    EnergyReading,
    EstimatedMeter,
    NvmlMeter,
    UnmeasuredMeter,
    meter_config,
    select_meter,
)
from provider_agent.engine.metrics import EngineCounters
from provider_agent.jobs.outbox import MIB, ReceiptOutbox
from tests.provider_agent.cli.conftest import MODEL, Services, init_agent
from tests.provider_agent.jobs.test_outbox import envelope
from tests.provider_agent.nvml_double import H100, mixed_gpus, two_h100s
from tests.provider_agent.run.market_double import DOMAIN


def _rows(output: str) -> dict[str, str]:
    """check name -> its whole table row."""
    rows: dict[str, str] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 2 and cells[1]:
            rows[cells[1]] = line
    return rows


@pytest.fixture
def configured(agent_env: Path, services: Services, monkeypatch: pytest.MonkeyPatch) -> Services:
    """vLLM and the market both point at the local server."""
    monkeypatch.setenv("AGENT_VLLM__URL", services.url)
    monkeypatch.setenv("AGENT_VLLM__SERVED_MODEL", MODEL)
    monkeypatch.setenv("AGENT_MARKET_URL", services.url)
    return services


def test_doctor_passes_the_local_checks_and_fails_without_a_chain(
    runner: CliRunner, configured: Services
) -> None:
    init_agent(runner)

    result = runner.invoke(cli.app, ["doctor"])

    assert result.exit_code == 1
    rows = _rows(result.stdout)
    for name in ("keystore", "vLLM health", "vLLM model", "market", "clock skew", "data dir space"):
        assert " pass " in rows[name], rows[name]
    assert "132 prompt / 481 generated tokens" in rows["vLLM metrics"]
    assert " warn " in rows["energy meter"]
    assert "unmeasured: receipts will say so" in rows["energy meter"]
    assert " fail " in rows["chain"]
    assert "AGENT_CHAIN_RPC_URL" in rows["chain"]
    assert " skip " in rows["stake"]


def test_doctor_names_a_missing_keystore(runner: CliRunner, configured: Services) -> None:
    result = runner.invoke(cli.app, ["doctor"])

    assert result.exit_code == 1
    assert "provider-agent init" in _rows(result.stdout)["keystore"]


def test_doctor_reports_a_wrong_passphrase(
    runner: CliRunner, configured: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_agent(runner)
    monkeypatch.setenv("AGENT_PASSPHRASE", "wrong")

    result = runner.invoke(cli.app, ["doctor"])

    assert result.exit_code == 1
    assert "wrong passphrase" in _rows(result.stdout)["keystore"]


def test_a_model_vllm_does_not_serve_fails_with_a_fix(services: Services) -> None:
    vllm = VllmSettings(url=services.url, served_model="llama-70b")
    with httpx.Client() as http:
        check = check_vllm_model(http, vllm)

    assert check.status == "fail"
    assert "tiny-llama" in check.detail
    assert check.fix is not None
    assert "--served-model-name llama-70b" in check.fix


def test_an_unreachable_vllm_is_a_warning_when_the_agent_starts_it() -> None:
    vllm = VllmSettings(url="http://127.0.0.1:9", command=["vllm", "serve", "m"])
    with httpx.Client() as http:
        check = check_vllm_health(http, vllm)

    assert check.status == "warn"
    assert check.fix == "runs: vllm serve m"


def test_clock_skew_over_two_seconds_warns(services: Services) -> None:
    with httpx.Client() as http:
        checks = check_market(http, services.url, now=lambda: time.time() + 10)

    assert checks[1] == Check(
        "clock skew", "warn", checks[1].detail, "sync the clock (chrony or systemd-timesyncd)"
    )
    assert checks[1].detail.startswith("+10.") or checks[1].detail.startswith("+9.")


def test_an_unreachable_market_fails() -> None:
    with httpx.Client() as http:
        checks = check_market(http, "http://127.0.0.1:9")

    assert [check.status for check in checks] == ["fail"]


def test_the_meter_check_passes_only_when_measured() -> None:
    fake = two_h100s()
    measured = check_energy_meter(NvmlMeter(fake, clock=fake.clock))
    estimated = check_energy_meter(EstimatedMeter(350.0, "NVML unavailable"))
    unmeasured = check_energy_meter(UnmeasuredMeter("NVML unavailable"))

    assert measured.status == "pass"
    assert "NVIDIA H100" in measured.detail
    assert (estimated.status, unmeasured.status) == ("warn", "warn")
    assert unmeasured.detail.startswith("unmeasured: receipts will say so")


@pytest.mark.parametrize("declared_power_w", [None, 350.0], ids=["unmeasured", "estimated"])
def test_the_meter_check_fixes_an_ambiguous_gpu_order_with_the_order_not_the_driver(
    declared_power_w: float | None,
) -> None:
    nvml = mixed_gpus()
    config = meter_config(None, declared_power_w, {"CUDA_VISIBLE_DEVICES": "1"})
    check = check_energy_meter(select_meter(config, nvml=nvml, clock=nvml.clock))
    driverless = check_energy_meter(UnmeasuredMeter("NVML unavailable", reason_code="no_gpu"))

    assert check.status == "warn"
    assert "(ambiguous_gpu_order)" in check.detail
    assert check.fix is not None
    assert check.fix.startswith(
        "set CUDA_DEVICE_ORDER=PCI_BUS_ID for vLLM and the agent, or name the GPUs by UUID"
    )
    assert "install the NVIDIA driver" not in check.fix
    assert driverless.fix is not None
    assert driverless.fix.startswith("install the NVIDIA driver")


@pytest.fixture
def mixed_rig(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML sees an RTX A4000 then an H100; vLLM is to run on CUDA's GPU 1."""
    monkeypatch.setattr("provider_agent.energy.nvml._load_pynvml", mixed_gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


@pytest.mark.usefixtures("mixed_rig")
def test_a_cuda_index_vllm_may_read_another_way_leaves_energy_unmeasured(
    runner: CliRunner, configured: Services
) -> None:
    init_agent(runner)

    meter = runner.invoke(cli.app, ["meter", "--interval", "0.05"])
    doctor = runner.invoke(cli.app, ["doctor"])

    assert "method    unmeasured" in meter.stdout
    assert "NVML unavailable (ambiguous_gpu_order): CUDA index 1" in meter.stdout
    order = _rows(doctor.stdout)["GPU order"]
    assert " warn " in order
    assert "CUDA index 1 counts GPUs fastest first" in order
    assert "set CUDA_DEVICE_ORDER=PCI_BUS_ID for vLLM and the agent" in order


@pytest.mark.usefixtures("mixed_rig")
def test_a_vllm_the_agent_starts_counts_gpus_as_nvml_so_they_are_metered(
    runner: CliRunner, configured: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_VLLM__COMMAND", '["vllm", "serve", "model"]')
    init_agent(runner)

    meter = runner.invoke(cli.app, ["meter", "--interval", "0.05"])
    doctor = runner.invoke(cli.app, ["doctor"])

    assert "method    measured" in meter.stdout
    assert f"gpu       NVIDIA H100 80GB HBM3 {H100}" in meter.stdout
    assert "RTX A4000" not in meter.stdout
    order = _rows(doctor.stdout)["GPU order"]
    assert " pass " in order
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in order


def test_the_gpu_order_check_passes_where_indices_name_the_gpus_vllm_uses() -> None:
    fake = two_h100s()
    meter = NvmlMeter(fake, clock=fake.clock, gpus=["0"], index_order="fastest_first")
    cuda_index = {"CUDA_VISIBLE_DEVICES": "0"}
    checks = {
        "all": check_gpu_order(None, {}, meter),
        "uuid": check_gpu_order(None, {"CUDA_VISIBLE_DEVICES": "GPU-1"}, meter),
        "nvml index": check_gpu_order(["0"], cuda_index, meter),
        "one model": check_gpu_order(None, cuda_index, meter),
    }

    assert {name: check.status for name, check in checks.items()} == dict.fromkeys(checks, "pass")
    assert "all GPUs are NVIDIA H100 80GB HBM3" in checks["one model"].detail
    unknown = check_gpu_order(None, cuda_index, UnmeasuredMeter("NVML unavailable"))
    assert (unknown.status, unknown.fix is not None) == ("warn", True)


def test_the_data_dir_space_check_fails_below_the_free_space_run_keeps(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent" / "not-made-yet"
    measured: list[Path] = []

    def free(path: Path) -> int:
        measured.append(path)
        return 63 * MIB + MIB // 2

    short = check_data_dir_space(data_dir, 64, free)
    enough = check_data_dir_space(data_dir, 63, free)

    assert measured == [tmp_path, tmp_path]
    assert (short.status, enough.status) == ("fail", "pass")
    assert (
        short.detail
        == f"63 MiB free on the disk of {data_dir}, 64 MiB kept free: run refuses new jobs"
    )
    assert short.fix is not None


def test_the_records_check_sizes_receipts_and_archive_and_names_the_retention(
    tmp_path: Path,
) -> None:
    assert check_records(tmp_path / "not-made-yet", None).detail == (
        "receipts 0.0 MiB, attestation archive 0.0 MiB, kept until removed by hand"
    )
    (tmp_path / "receipts").mkdir()
    (tmp_path / "receipts" / "2026-01-01.jsonl").write_bytes(b"x" * MIB)
    (tmp_path / "receipts.jsonl").write_bytes(b"x" * (MIB // 2))
    (tmp_path / "attestations-archive").mkdir()
    (tmp_path / "attestations-archive" / "2026-01-01-seq.jsonl.gz").write_bytes(b"x" * (MIB // 4))
    (tmp_path / "attestations.jsonl").write_bytes(b"x" * MIB)  # the chain file: not counted

    check = check_records(tmp_path, 30)

    assert (check.name, check.status) == ("data dir records", "pass")
    assert check.detail == (
        "receipts 1.5 MiB, attestation archive 0.2 MiB, answered ones kept 30 days"
    )


def test_meter_shows_two_readings_or_why_not(runner: CliRunner, agent_env: Path) -> None:
    result = runner.invoke(cli.app, ["meter", "--interval", "0.05"])

    assert result.exit_code == 0, result.output
    assert "energy meter" in result.stdout
    assert "window" in result.stdout
    assert "energy    unmeasured: " in result.stdout or " mJ (measured" in result.stdout


def test_status_marks_what_is_unreachable(
    runner: CliRunner, agent_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("AGENT_LISTEN__PORT", str(port))
    result = runner.invoke(cli.app, ["status"])

    assert result.exit_code == 0, result.output
    url = f"http://127.0.0.1:{port}/agent/status"
    assert f"unavailable: not running (nothing answers at {url})" in result.stdout
    assert "unavailable: no keystore" in result.stdout
    assert "unavailable: this command needs the chain" in result.stdout
    assert "unavailable: market_url not set" in result.stdout
    assert "none signed yet" in result.stdout


def test_status_counts_the_receipts_the_market_has_not_answered_or_will_not_pay(
    runner: CliRunner, agent_env: Path
) -> None:
    outbox = ReceiptOutbox(agent_env)
    for n in (1, 2, 3):
        outbox.add(envelope(n))
    outbox.mark_sent([f"{1:032x}", f"{2:032x}"])
    outbox.record_unpaid([{"job_id": f"{2:032x}", "state": "closed", "detail": "abandoned"}])

    result = runner.invoke(cli.app, ["status"])

    assert result.exit_code == 0, result.output
    unpaid = agent_env / "receipts-unpaid.jsonl"
    assert "1 not yet answered by the market, 1 it will not pay" in result.stdout
    assert f"(listed with the reason in {unpaid})" in result.stdout


def test_status_counts_the_attestations_the_market_refused(
    runner: CliRunner, agent_env: Path
) -> None:
    identity = ProviderIdentity.generate()
    store = AttestationLog(agent_env, fsync=False)
    builder = AttestationBuilder(
        provider=identity.address, domain=DOMAIN, signing_key=identity.signing_key, log_store=store
    )
    readings = [
        EnergyReading("unmeasured", n * 10**9, 1_000 * (n + 1), reason="test") for n in range(4)
    ]
    tokens = EngineCounters(0, 0, 0, 0)
    for start, end in itertools.pairwise(readings):
        builder.build(start, end, tokens, tokens, [0], [0])
    store.mark_sent(0)
    store.resume_from(ChainHead(seq=7, digest="0x" + "cd" * 32, window_end=9_000), 409, "fork")

    result = runner.invoke(cli.app, ["status"])

    assert result.exit_code == 0, result.output
    refused = agent_env / "attestations-refused.jsonl"
    assert f"head seq 7, 0 unsent, 2 refused by the market (listed in {refused})" in result.stdout
