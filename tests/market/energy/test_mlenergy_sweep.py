"""Run the plausibility checks over every ML.ENERGY configuration, honest and distorted.

Each configuration becomes a 600 s attestation window: tokens = tokens/s x 600, energy =
J/token x tokens, power = the measured average power (v2.0 rows: J/token x tokens/s).
Distortions multiply one figure of that record (energy, tokens or power) by 2 or 1/2 and
leave the rest. `pytest -s` prints the catch rates quoted in docs/energy-accounting.md.

What a distortion "breaks" (each is asserted to be caught):

- physics: J/token below the FLOP floor (`jpt_floor`) or power per GPU above TDP + 2 %;
- the measured band: the distorted J/token, tokens/s per GPU or power per GPU lies outside
  [min, max] of that figure over the ML.ENERGY configurations the claim is compared with
  by GPU, size class and batch (`reference_configs`: same GPU model and active-parameter
  class, average batch within x2 of the claim's concurrency, else the 3 nearest), i.e.
  outside the span the data itself covers there, with no tolerance.

Since the fitted bands are fitted on the very configurations replayed here, the
leave-one-model-out figure refits them without each model in turn and counts that
model's honest configurations the refit flags (jpt_band or throughput_band).
"""

from __future__ import annotations

from dataclasses import replace

from market.energy.bands import ReferenceFit
from market.energy.data import gpus, mlenergy_configs, model_params
from market.energy.plausibility import (
    BAND_TOLERANCE,
    EnergyClaim,
    check_claim,
    jpt_floor,
    reference_configs,
)

DURATION_S = 600.0
FACTORS = (2.0, 0.5)
FIELDS = ("energy_j", "output_tokens", "avg_power_w")
FITTED = ("jpt_band", "throughput_band")


def _claims() -> list[EnergyClaim]:
    out = []
    for config in mlenergy_configs():
        tokens = round(config.tokens_per_s * DURATION_S)
        out.append(
            EnergyClaim(
                gpu_name=config.gpu,
                num_gpus=config.num_gpus,
                model=config.model,
                concurrency=config.avg_batch,
                energy_j=config.j_per_token * tokens,
                output_tokens=tokens,
                duration_s=DURATION_S,
                avg_power_w=config.avg_power_w,
                power_limit_w=float(gpus()[config.gpu_spec].tdp_w),
            )
        )
    return out


def _distort(claim: EnergyClaim, field: str, factor: float) -> EnergyClaim:
    if field == "energy_j":
        return replace(claim, energy_j=(claim.energy_j or 0.0) * factor)
    if field == "output_tokens":
        return replace(claim, output_tokens=round(claim.output_tokens * factor))
    return replace(claim, avg_power_w=(claim.avg_power_w or 0.0) * factor)


def _jpt(claim: EnergyClaim) -> float:
    return (claim.energy_j or 0.0) / claim.output_tokens


def _per_gpu(claim: EnergyClaim) -> tuple[float, float]:
    """(tokens/s per GPU, power per GPU)."""
    return (
        claim.output_tokens / claim.duration_s / claim.num_gpus,
        (claim.avg_power_w or 0.0) / claim.num_gpus,
    )


def _breaks_physics(claim: EnergyClaim) -> bool:
    params = model_params(claim.model)
    assert params is not None
    floor = jpt_floor(params.active_b, claim.gpu_name, params.precision)
    assert floor is not None
    tdp = next(spec.tdp_w for key, spec in gpus().items() if claim.gpu_name.startswith(key[:4]))
    return _jpt(claim) < floor or _per_gpu(claim)[1] > tdp * 1.02


def _breaks_measured_band(claim: EnergyClaim) -> bool:
    """Outside the span of the reference group's own figures (module docstring)."""
    params = model_params(claim.model)
    assert params is not None
    refs = reference_configs(claim.gpu_name, params.active_b, claim.concurrency)
    assert refs
    rate, power = _per_gpu(claim)
    spans = (
        (_jpt(claim), [c.j_per_token for c in refs]),
        (rate, [c.tokens_per_s / c.num_gpus for c in refs]),
        (power, [c.power_per_gpu_w for c in refs]),
    )
    return any(
        not min(values) / BAND_TOLERANCE <= value <= max(values) * BAND_TOLERANCE
        for value, values in spans
    )


def test_every_measured_configuration_passes() -> None:
    claims = _claims()
    assert len(claims) == 1029
    flagged = []
    for claim in claims:
        results = check_claim(claim)
        assert not [r for r in results if r.ok is None], (claim, results)
        failed = [r for r in results if r.ok is False]
        if failed:
            flagged.append((claim, failed))
    assert flagged == []


def _leave_one_model_out() -> tuple[int, int, dict[str, int]]:
    """Honest configurations flagged by a fit without their model: (flagged, total, per model)."""
    claims = _claims()
    configs = mlenergy_configs()
    per_model: dict[str, int] = {}
    for model in sorted({c.model for c in configs}):
        refit = ReferenceFit([c for c in configs if c.model != model])
        for claim in (c for c in claims if c.model == model):
            failed = [r for r in check_claim(claim, refit) if r.ok is False]
            if any(r.check in FITTED for r in failed):
                per_model[model] = per_model.get(model, 0) + 1
    return sum(per_model.values()), len(claims), per_model


def test_distortions_are_caught() -> None:
    claims = _claims()
    total = len(claims)
    print()
    print(
        f"{'distortion':<20}{'caught':>9}{'w/o consist.':>14}"
        f"{'breaks physics':>22}{'breaks band':>22}"
    )
    caught_by: dict[tuple[str, float], int] = {}
    for field in FIELDS:
        for factor in FACTORS:
            caught = no_consistency = physics = physics_caught = band = band_caught = 0
            for claim in claims:
                bad = _distort(claim, field, factor)
                failed = [r for r in check_claim(bad) if r.ok is False]
                caught += bool(failed)
                no_consistency += any(r.check != "energy_power_consistency" for r in failed)
                if _breaks_physics(bad):
                    physics += 1
                    physics_caught += bool(failed)
                if _breaks_measured_band(bad):
                    band += 1
                    band_caught += bool(failed)
            caught_by[field, factor] = caught
            name = f"{field} x{factor:g}"
            print(
                f"{name:<20}{caught / total:>9.1%}{no_consistency / total:>14.1%}"
                f"{physics:>10} ({physics_caught:>4} caught){band:>10} ({band_caught:>4} caught)"
            )
            assert physics_caught == physics, (field, factor)
            assert band_caught == band, (field, factor)
    overall = sum(caught_by.values()) / (len(caught_by) * total)
    print(f"{'all':<20}{overall:>9.1%}")
    flagged, honest, per_model = _leave_one_model_out()
    print(
        f"leave-one-model-out: {flagged} of {honest} honest configurations flagged "
        f"({len(per_model)} of {len({c.model for c in claims})} models)"
    )
    for model, count in sorted(per_model.items(), key=lambda item: -item[1]):
        print(f"  {model}: {count}")
    # Energy and power distortions all break energy = power x duration.
    for (field, _factor), caught in caught_by.items():
        if field != "output_tokens":
            assert caught == total
    # Token distortions are caught where they leave the fitted band of their model.
    assert caught_by["output_tokens", 2.0] / total >= 0.75
    assert caught_by["output_tokens", 0.5] / total >= 0.70
