"""The README's main job (`market demo`) end to end, checked to the base unit.

The end-to-end test starts a real vLLM from `.venv-vllm` (25-35 s), the market in-process on
the embedded default, and `provider-agent run`; it is skipped when the vLLM venv is absent,
unless CI is set (then the venv must be there and the test fails instead).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from market.demo import DemoOptions, charge_for, energy_rows, fee_for, run_demo, tusd
from market.demo.flow import agent_env, prepare_work_dir
from market.demo.vllm_server import vllm_python


def test_charge_rounds_up_to_the_base_unit() -> None:
    assert charge_for(1, 0, 1, 0) == 1
    assert charge_for(0, 0, 200_000, 600_000) == 0
    # 45 * 0.2 + 48 * 0.6 = 37.8 base units -> 38
    assert charge_for(45, 48, 200_000, 600_000) == 38
    assert charge_for(1_000_000, 1_000_000, 200_000, 600_000) == 800_000


def test_fee_rounds_down_and_payout_is_the_rest() -> None:
    assert fee_for(38, 500) == 1
    assert fee_for(10_000, 500) == 500
    assert 38 - fee_for(38, 500) == 37


def test_tusd_shows_both_units() -> None:
    assert tusd(38) == "0.000038 tUSD (38 base units)"
    assert tusd(5_000_000) == "5.000000 tUSD (5,000,000 base units)"
    assert tusd(-1) == "-0.000001 tUSD (-1 base units)"


def test_unmeasured_energy_is_never_shown_as_zero() -> None:
    rows = dict(energy_rows({"method": "unmeasured", "joules": None, "basis": None}, "no NVML"))
    assert rows["energy method"] == "unmeasured (no NVML)"
    for name in ("GPU energy", "energy at the wall", "energy cost", "emissions"):
        assert rows[name] == "not measured"
    assert dict(energy_rows(None, None))["GPU energy"] == "not measured"


def test_measured_energy_rows() -> None:
    block = {
        "method": "measured",
        "gpu_joules": "12.5",
        "wall_kwh": "0.0000048611",
        "energy_cost": {"amount": "0.0000007", "currency": "USD", "base_units": 1},
        "gco2": "0",
    }
    rows = dict(energy_rows(block, None))
    assert rows["energy method"] == "measured"
    assert rows["GPU energy"] == "12.5 J"
    assert rows["energy at the wall"] == "0.0000048611 kWh"
    assert rows["energy cost"] == "0.0000007 USD (1 base units)"
    assert rows["emissions"] == "0 gCO2"  # a measured zero is a zero


def test_agent_env_flattens_nested_groups() -> None:
    env = agent_env(
        {"data_dir": Path("/x"), "vllm": {"url": "http://v", "served_model": None}, "run": {}},
        {"AGENT_VLLM__URL": "stale", "PATH": "/bin"},
    )
    assert env == {"PATH": "/bin", "AGENT_DATA_DIR": "/x", "AGENT_VLLM__URL": "http://v"}


def test_work_dir_is_fresh_but_keeps_the_model(tmp_path: Path) -> None:
    (tmp_path / "models" / "tiny-llama").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    (tmp_path / "market.sqlite3").write_text("old")
    prepare_work_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gitignore", "models"]


def _listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.timeout(600)
def test_demo_end_to_end(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if vllm_python() is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but .venv-vllm is missing (scripts/bootstrap.sh --with-vllm)")
        pytest.skip("no vLLM venv (.venv-vllm): run scripts/bootstrap.sh --with-vllm")
    cache = getattr(request.config, "cache", None)  # the engine tests' tiny model, built once
    model_dir = cache.mkdir("tiny-llama") if cache is not None else None
    outcome = run_demo(DemoOptions(work_dir=tmp_path / "demo", model_dir=model_dir))

    assert outcome.answer.strip()
    assert outcome.completion_tokens > 0
    assert outcome.prompt_tokens > 0
    # charged exactly for the receipt's tokens at the offer's prices, fee at 500 bps
    assert outcome.charge == outcome.expected_charge > 0
    assert outcome.fee == outcome.charge * 500 // 10_000
    # the buyer's escrow fell by the charge, the provider's wallet rose by charge - fee
    assert outcome.escrow_before == outcome.deposit == outcome.credited
    assert outcome.escrow_before - outcome.escrow_after == outcome.charge
    assert outcome.earnings == outcome.charge - outcome.fee
    assert outcome.provider_wallet_after - outcome.provider_wallet_before == outcome.payout
    assert outcome.payout == outcome.charge - outcome.fee
    # the receipt is in the settled epoch's root; a forged leaf is not
    assert outcome.proof_verified
    assert outcome.tampered_proof_rejected
    assert outcome.settle_tx.startswith("0x")
    assert outcome.settle_gas > 21_000
    # no meter here: unmeasured, no joules
    assert outcome.energy.get("method") == "unmeasured"
    assert outcome.energy.get("joules") is None
    # everything was stopped: nothing listens on the demo's ports any more
    ports = {
        int(url.rsplit(":", 1)[1])
        for url in (outcome.market_url, outcome.vllm_url, outcome.agent_url)
    }
    assert not ports & _listening_ports()
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
