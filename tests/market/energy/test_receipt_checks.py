"""Per-receipt checks: honest receipts from ML.ENERGY rows pass, impossible ones fail.

An honest receipt of one configuration: completion tokens = its average output length,
energy = J/token x tokens, decode time = tokens / (tokens/s / average batch), the ticket
issued `PREFILL_MS` before the first token.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from market.energy import receipt_checks
from market.energy.data import MlEnergyConfig, gpu_spec, gpus, mlenergy_configs, model_params
from market.energy.plausibility import jpt_floor
from market.energy.receipt_checks import (
    CLOCK_SKEW_MS,
    DECODE_SPEED_TOLERANCE,
    ReceiptClaim,
    check_receipt_claim,
    per_sequence_ceiling,
)

PREFILL_MS = 300
T0 = 1_700_000_000_000


def _receipt(config: MlEnergyConfig) -> ReceiptClaim:
    tokens = max(1, round(config.avg_output_len))
    decode_ms = round(1000 * tokens * config.avg_batch / config.tokens_per_s)
    first = T0 + PREFILL_MS
    return ReceiptClaim(
        gpu_name=config.gpu,
        num_gpus=config.num_gpus,
        power_limit_w=float(gpus()[config.gpu_spec].tdp_w),
        model=config.model,
        prompt_tokens=500,
        completion_tokens=tokens,
        energy_method="measured",
        energy_j=config.j_per_token * tokens,
        first_token_at_ms=first,
        finished_at_ms=first + decode_ms,
        ticket_issued_at_ms=T0,
    )


def _by_check(claim: ReceiptClaim) -> dict[str, tuple[bool | None, str]]:
    return {r.check: (r.ok, r.kind) for r in check_receipt_claim(claim)}


def _llama8b_h100() -> ReceiptClaim:
    return ReceiptClaim(
        gpu_name="NVIDIA H100 80GB HBM3",
        num_gpus=1,
        power_limit_w=700.0,
        model="meta-llama/Llama-3.1-8B-Instruct",
        prompt_tokens=128,
        completion_tokens=512,
        energy_method="measured",
        energy_j=512 * 0.5,
        first_token_at_ms=T0 + 200,
        finished_at_ms=T0 + 200 + 8_000,
        ticket_issued_at_ms=T0,
    )


def test_every_measured_configuration_gives_a_passing_receipt() -> None:
    configs = mlenergy_configs()
    assert len(configs) == 1029
    for config in configs:
        results = check_receipt_claim(_receipt(config))
        assert [r.check for r in results] == [
            "timing_order",
            "decode_speed",
            "receipt_jpt_floor",
            "receipt_power",
        ]
        assert not [r for r in results if r.ok is False], (config, results)
        assert not [r for r in results if r.ok is None], (config, results)


def test_honest_example_passes_with_reasons() -> None:
    results = check_receipt_claim(_llama8b_h100())
    assert all(r.ok for r in results), results
    assert all(r.reason for r in results)


def test_first_token_before_ticket_is_inconsistent() -> None:
    claim = replace(_llama8b_h100(), ticket_issued_at_ms=T0 + 200 + CLOCK_SKEW_MS + 1)
    assert _by_check(claim)["timing_order"] == (False, "consistency")
    # Within the clock skew it passes.
    claim = replace(_llama8b_h100(), ticket_issued_at_ms=T0 + 200 + CLOCK_SKEW_MS)
    assert _by_check(claim)["timing_order"] == (True, "consistency")


def test_finish_before_first_token_is_inconsistent() -> None:
    claim = replace(_llama8b_h100(), finished_at_ms=T0 + 100)
    assert _by_check(claim)["timing_order"] == (False, "consistency")


def test_decode_faster_than_one_sequence_can_is_flagged_as_data() -> None:
    found = per_sequence_ceiling("NVIDIA H100 80GB HBM3", 8.0)
    assert found is not None
    ceiling = found[0] * DECODE_SPEED_TOLERANCE
    tokens = round(ceiling * 10 * 1.1)  # 10 s of decode at 1.1 x the ceiling
    claim = replace(_llama8b_h100(), completion_tokens=tokens, finished_at_ms=T0 + 200 + 10_000)
    claim = replace(claim, energy_j=tokens * 0.5)
    assert _by_check(claim)["decode_speed"] == (False, "data")
    slower = replace(claim, completion_tokens=round(ceiling * 10 * 0.9))
    assert _by_check(slower)["decode_speed"] == (True, "data")


@pytest.mark.parametrize(
    ("tokens", "span_ms"), [(20, 2_000), (10_000, 900)], ids=["few-tokens", "short-span"]
)
def test_decode_speed_skips_short_receipts(tokens: int, span_ms: int) -> None:
    claim = replace(_llama8b_h100(), completion_tokens=tokens, finished_at_ms=T0 + 200 + span_ms)
    assert _by_check(claim)["decode_speed"] == (None, "data")


def test_energy_below_the_floor_is_physics() -> None:
    floor = jpt_floor(8.0, "H100-SXM")
    assert floor is not None
    claim = replace(_llama8b_h100(), energy_j=512 * floor * 0.9)
    assert _by_check(claim)["receipt_jpt_floor"] == (False, "physics")


def test_energy_above_the_power_limit_over_the_whole_request_is_physics() -> None:
    honest = _llama8b_h100()
    assert honest.ticket_issued_at_ms is not None
    span_s = (honest.finished_at_ms - honest.ticket_issued_at_ms + CLOCK_SKEW_MS) / 1000
    claim = replace(honest, energy_j=700 * 1.03 * span_s)
    assert _by_check(claim)["receipt_power"] == (False, "physics")
    # Two GPUs may spend twice as much.
    assert _by_check(replace(claim, num_gpus=2))["receipt_power"] == (True, "physics")
    # A lower enforced limit lowers the ceiling.
    lower = replace(honest, power_limit_w=300.0, energy_j=300 * 1.03 * span_s)
    assert _by_check(lower)["receipt_power"] == (False, "physics")


def test_long_queueing_does_not_flag_power() -> None:
    # A request that waited 60 s before its first token and spent a whole GPU's 650 W
    # from issue to finish is honest: the interval starts at ticket issue.
    honest = _llama8b_h100()
    claim = replace(
        honest,
        first_token_at_ms=T0 + 60_000,
        finished_at_ms=T0 + 61_000,
        completion_tokens=50,
        energy_j=650 * 61.0,
    )
    assert _by_check(claim)["receipt_power"] == (True, "physics")


def test_unmeasured_energy_skips_energy_checks() -> None:
    for energy in (None, 1e12, 0.0):
        claim = replace(_llama8b_h100(), energy_method="unmeasured", energy_j=energy)
        results = _by_check(claim)
        assert results["receipt_jpt_floor"] == (None, "physics")
        assert results["receipt_power"] == (None, "physics")
        assert results["timing_order"] == (True, "consistency")


def test_unknown_gpu_or_model_skips() -> None:
    results = _by_check(replace(_llama8b_h100(), gpu_name=None, power_limit_w=None))
    assert results["decode_speed"][0] is None
    assert results["receipt_jpt_floor"][0] is None
    assert results["receipt_power"][0] is None
    results = _by_check(replace(_llama8b_h100(), model="someone/mystery-model"))
    assert results["decode_speed"][0] is None
    assert results["receipt_jpt_floor"][0] is None
    # The power bound needs no model, only the GPU's limit.
    assert results["receipt_power"][0] is True
    no_ticket = replace(_llama8b_h100(), ticket_issued_at_ms=None)
    assert _by_check(no_ticket)["receipt_power"][0] is None


def test_no_completion_tokens() -> None:
    claim = replace(
        _llama8b_h100(), completion_tokens=0, first_token_at_ms=None, finished_at_ms=T0 + 500
    )
    results = _by_check(claim)
    assert results["timing_order"] == (True, "consistency")
    assert results["decode_speed"][0] is None
    assert results["receipt_jpt_floor"][0] is None


def test_memoised_lookups_give_what_the_data_gives() -> None:
    # The checks' lookups (model parameters, GPU datasheet row, J/token floor) are memoised;
    # cold and warm, they match the uncached functions, unknown names included.
    for memo in (receipt_checks._model_params, receipt_checks._gpu_spec, receipt_checks._jpt_floor):
        memo.cache_clear()
    gpu_names = [*sorted({c.gpu for c in mlenergy_configs()}), "NVIDIA H100 80GB HBM3", "TPU"]
    models = [*sorted({c.model for c in mlenergy_configs()}), "acme/unsized", "x/Qwen3-30B-A3B"]
    for _ in range(2):
        for gpu in gpu_names:
            assert receipt_checks._gpu_spec(gpu) == gpu_spec(gpu)
        for model in models:
            params = model_params(model)
            assert receipt_checks._model_params(model) == params
            if params is None:
                continue
            for gpu in gpu_names:
                expected = jpt_floor(params.active_b, gpu, params.precision)
                assert receipt_checks._jpt_floor(params.active_b, gpu, params.precision) == expected
    claim = _llama8b_h100()
    assert check_receipt_claim(claim) == check_receipt_claim(replace(claim))
