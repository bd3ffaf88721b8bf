"""Run the plausibility checks over every ML.ENERGY configuration, honest and distorted.

Each configuration becomes a 600 s attestation window: tokens = tokens/s x 600, energy =
J/token x tokens, power = the measured average power (v2.0 rows: J/token x tokens/s).
Distortions multiply one figure of that record (energy, tokens or power) by 2 or 1/2 and
leave the rest. `pytest -s` prints the catch rates quoted in docs/energy-accounting.md.
"""

from __future__ import annotations

from dataclasses import replace

from market.energy.data import gpus, mlenergy_configs
from market.energy.plausibility import EnergyClaim, check_claim, jpt_floor

DURATION_S = 600.0
FACTORS = (2.0, 0.5)
FIELDS = ("energy_j", "output_tokens", "avg_power_w")


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


def _breaks_physics(claim: EnergyClaim) -> bool:
    config_gpu = gpus()[next(k for k in gpus() if claim.gpu_name.startswith(k[:4]))]
    floor = jpt_floor(_active(claim), claim.gpu_name, _precision(claim))
    assert floor is not None
    jpt = (claim.energy_j or 0.0) / claim.output_tokens
    per_gpu = (claim.avg_power_w or 0.0) / claim.num_gpus
    return jpt < floor or per_gpu > config_gpu.tdp_w * 1.02


def _active(claim: EnergyClaim) -> float:
    from market.energy.data import model_params

    params = model_params(claim.model)
    assert params is not None
    return params.active_b


def _precision(claim: EnergyClaim) -> str:
    from market.energy.data import model_params

    params = model_params(claim.model)
    assert params is not None
    return params.precision


def test_every_measured_configuration_passes() -> None:
    claims = _claims()
    assert len(claims) == 1029
    for claim in claims:
        failed = [r for r in check_claim(claim) if r.ok is False]
        skipped = [r for r in check_claim(claim) if r.ok is None]
        assert not failed, (claim, failed)
        assert not skipped, (claim, skipped)


def test_distortions_are_caught() -> None:
    claims = _claims()
    rows = []
    for field in FIELDS:
        for factor in FACTORS:
            caught = caught_no_consistency = physics = physics_caught = 0
            for claim in claims:
                bad = _distort(claim, field, factor)
                results = check_claim(bad)
                failed = [r for r in results if r.ok is False]
                if failed:
                    caught += 1
                if any(r.check != "energy_power_consistency" for r in failed):
                    caught_no_consistency += 1
                if _breaks_physics(bad):
                    physics += 1
                    physics_caught += bool(failed)
            rows.append((field, factor, caught, caught_no_consistency, physics, physics_caught))
    total = len(claims)
    print()
    print(f"{'distortion':<22}{'caught':>10}{'w/o consistency':>18}{'breaks physics':>16}")
    for field, factor, caught, no_cons, physics, physics_caught in rows:
        name = f"{field} x{factor:g}"
        print(
            f"{name:<22}{caught / total:>10.1%}{no_cons / total:>18.1%}"
            f"{physics:>10} ({physics_caught} caught)"
        )
    all_caught = sum(r[2] for r in rows)
    print(
        f"{'all':<22}{all_caught / (6 * total):>10.1%}"
        f"{sum(r[3] for r in rows) / (6 * total):>18.1%}"
    )
    for _field, _factor, _caught, _no_cons, physics, physics_caught in rows:
        assert physics_caught == physics
    # Energy and power distortions all break energy = power x duration; token distortions
    # are caught only where they leave the measured band (see docs/energy-accounting.md).
    for field, _factor, caught, _no_cons, _physics, _physics_caught in rows:
        if field != "output_tokens":
            assert caught == total
    assert all_caught / (6 * total) >= 0.75
