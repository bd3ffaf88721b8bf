"""The README's main job on the embedded default, checked to the base unit."""

from __future__ import annotations

from typer.testing import CliRunner

from market.cli import app
from market.demo import SampleUsage, charge_for, run_demo


def test_demo_settles_exactly_what_was_charged() -> None:
    usage = SampleUsage()
    outcome = run_demo(usage)
    expected = (18_000 * 150_000 + 42_000 * 600_000) // 1_000_000
    assert outcome.charge == charge_for(usage) == expected
    assert outcome.fee == expected * 500 // 10_000
    assert outcome.payout == outcome.charge - outcome.fee
    assert outcome.escrow_after == outcome.deposit - outcome.charge
    assert outcome.provider_balance_after == outcome.payout
    assert outcome.proof_verified


def test_charge_rounds_up_to_the_base_unit() -> None:
    tiny = SampleUsage(prompt_tokens=1, completion_tokens=0, price_in_per_mtok=1)
    assert charge_for(tiny) == 1


def test_demo_command_prints_the_outcome() -> None:
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "receipt proof checked on-chain" in result.output
    assert "provider payout" in result.output
