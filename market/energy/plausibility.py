"""Checks of a provider's energy claims against physics and ML.ENERGY's measurements.

Each check returns a `CheckResult` with a reason; `ok` is None when the check could not
run (GPU or model unknown, energy unmeasured), which is recorded as "skipped", never as a
pass. `kind` says what a failure means: "physics" (impossible: power above the limit,
J/token below the FLOP-derived floor), "data" (outside what was measured, with tolerance),
"consistency" (the record disagrees with itself) or "hygiene" (counters and chain).

The reference group (`reference_configs`): ML.ENERGY configurations on the same GPU model,
in the same active-parameter size class (`SIZE_CLASS_EDGES_B`), at a concurrency within a
factor `BATCH_WINDOW` of the claim's (fewer than `MIN_REFERENCES` there: the
`MIN_REFERENCES` nearest in log batch size). Its band is [min / tol, max * tol] over those
configurations with `BAND_TOLERANCE`; `power_band` uses it alone.

The fitted bands (`market.energy.bands.ReferenceFit`, for `jpt_band` and
`throughput_band`): per GPU, a least-squares fit of log J/token and log tokens/s per GPU
plus the residual spread of the model (or of the GPU), widened by a margin; see that
module. Where the claim's concurrency is within
`BATCH_WINDOW` of the reference group's batches, the band is also cut to the group's band
(both must hold). Both sides are "data" failures: above J/token or below tokens/s is an
engine less efficient than measured (or deflated tokens), the other side a more efficient
one (or inflated tokens); physics is the floor and the power limit. On the ML.ENERGY replay
(tests/market/energy/test_mlenergy_sweep.py) no honest configuration is flagged; that is
in-sample, and its leave-one-model-out figure says how models without data fare.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from market.energy.bands import PRECISION_SPEEDUP, FittedBands, ReferenceFit, reference_fit
from market.energy.data import (
    MlEnergyConfig,
    gpu_key,
    gpu_spec,
    gpus,
    mlenergy_configs,
    model_params,
)
from protocol.messages import Attestation, message_digest

CheckKind = Literal["physics", "data", "consistency", "hygiene"]

SIZE_CLASS_EDGES_B: tuple[float, ...] = (4.0, 10.0, 20.0, 40.0, 100.0)
"""Active-parameter size classes in billions: <4, 4-10, 10-20, 20-40, 40-100, >=100."""
BATCH_WINDOW = 2.0
MIN_REFERENCES = 3
BAND_TOLERANCE = 1.25
"""Measured bands are widened by this factor each way (25 %)."""
FLOOR_MARGIN = 1.5
"""J/token below floor x this is implausible; the lowest measured value is 2.8 x floor."""
POWER_LIMIT_TOLERANCE = 1.02
"""Average power may exceed the enforced limit by 2 % (counter and limit granularity)."""
IDLE_FLOOR_FRACTION = 0.5
"""Idle floor = half the lowest idle draw reported for the GPU; else `IDLE_FLOOR_OF_TDP`."""
IDLE_FLOOR_OF_TDP = 0.05
ENERGY_POWER_TOLERANCE = 0.02
"""Energy and average power x duration may differ by 2 % (plus 1 J)."""
MIN_WINDOW_MS = 1_000
MAX_WINDOW_MS = 15 * 60 * 1_000
MAX_GAP_MS = 60 * 1_000
RECEIPT_TOKEN_TOLERANCE = 0.02
"""Attested generation tokens and the sum of receipts may differ by 2 % plus one max request."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ok True/False, or None when it could not run."""

    check: str
    ok: bool | None
    kind: CheckKind
    reason: str

    @property
    def status(self) -> str:
        return "skipped" if self.ok is None else ("pass" if self.ok else "fail")


@dataclass(frozen=True)
class EnergyClaim:
    """The figures of one attestation window that the physics and data checks read."""

    gpu_name: str
    num_gpus: int
    model: str
    concurrency: float
    """Average running requests over the window (avg_running_requests_milli / 1000)."""
    energy_j: float | None
    """Total over the GPUs; None when unmeasured."""
    output_tokens: int
    duration_s: float
    avg_power_w: float | None
    """Total over the GPUs."""
    power_limit_w: float | None
    """Enforced limit of one GPU."""
    active_params_b: float | None = None
    """Overrides the parameter count from the model name."""
    precision: str | None = None


def size_class(active_b: float) -> int:
    """Index of the size class of a model with `active_b` billion active parameters."""
    return sum(1 for edge in SIZE_CLASS_EDGES_B if active_b >= edge)


def jpt_floor(active_b: float, gpu: str, precision: str = "bf16") -> float | None:
    """Physics floor of J per output token: 2 x active params / (peak FLOP per joule)."""
    spec = gpu_spec(gpu)
    if spec is None:
        return None
    per_joule = spec.peak_flops_per_joule_bf16 * PRECISION_SPEEDUP.get(precision, 1.0)
    return 2.0 * active_b * 1e9 / per_joule


def reference_configs(
    gpu: str,
    active_b: float,
    concurrency: float,
    configs: Sequence[MlEnergyConfig] | None = None,
) -> list[MlEnergyConfig]:
    """The measured configurations a claim is compared with (see the module docstring),
    out of `configs` (default: all of ML.ENERGY)."""
    key = gpu_key(gpu)
    group = [
        config
        for config in (mlenergy_configs() if configs is None else configs)
        if config.gpu_spec == key and size_class(config.params.active_b) == size_class(active_b)
    ]
    if not group or concurrency <= 0:
        return []
    distance = {id(c): abs(math.log(c.avg_batch / concurrency)) for c in group}
    near = [c for c in group if distance[id(c)] <= math.log(BATCH_WINDOW)]
    if len(near) < MIN_REFERENCES:
        near = sorted(group, key=lambda c: distance[id(c)])[:MIN_REFERENCES]
    return near


def _params(claim: EnergyClaim) -> tuple[float, str] | None:
    params = model_params(claim.model)
    active = claim.active_params_b if claim.active_params_b is not None else None
    if active is None and params is not None:
        active = params.active_b
    if active is None:
        return None
    precision = claim.precision or (params.precision if params is not None else "bf16")
    return active, precision


def skipped(check: str, kind: CheckKind, reason: str) -> CheckResult:
    """A check that could not run, with the reason (recorded as "skipped", never a pass)."""
    return CheckResult(check, None, kind, reason)


def check_power_range(claim: EnergyClaim) -> CheckResult:
    """(a) Average power per GPU between the GPU's idle floor and its enforced limit."""
    name = "power_range"
    spec = gpu_spec(claim.gpu_name)
    if claim.avg_power_w is None:
        return skipped(name, "physics", "no average power reported")
    if spec is None:
        return skipped(name, "physics", f"GPU {claim.gpu_name!r} not in gpus.csv")
    per_gpu = claim.avg_power_w / claim.num_gpus
    limit = min(float(spec.tdp_w), claim.power_limit_w or float(spec.tdp_w))
    ceiling = limit * POWER_LIMIT_TOLERANCE
    idle = spec.idle_w[0] * IDLE_FLOOR_FRACTION if spec.idle_w else spec.tdp_w * IDLE_FLOOR_OF_TDP
    if per_gpu > ceiling:
        return CheckResult(
            name,
            False,
            "physics",
            f"{per_gpu:.0f} W per GPU above the power limit {limit:.0f} W (+2 %)",
        )
    if per_gpu < idle:
        return CheckResult(
            name, False, "data", f"{per_gpu:.0f} W per GPU below the idle floor {idle:.0f} W"
        )
    return CheckResult(
        name, True, "physics", f"{per_gpu:.0f} W per GPU in [{idle:.0f}, {limit:.0f}]"
    )


def check_energy_power_consistency(claim: EnergyClaim) -> CheckResult:
    """Window energy = average power x duration (the agent derives power from the counter)."""
    name = "energy_power_consistency"
    if claim.energy_j is None or claim.avg_power_w is None:
        return skipped(name, "consistency", "energy or power not reported")
    expected = claim.avg_power_w * claim.duration_s
    slack = expected * ENERGY_POWER_TOLERANCE + 1.0
    if abs(claim.energy_j - expected) > slack:
        return CheckResult(
            name,
            False,
            "consistency",
            f"energy {claim.energy_j:.0f} J but power x duration = {expected:.0f} J",
        )
    return CheckResult(name, True, "consistency", "energy matches power x duration")


def check_jpt_floor(claim: EnergyClaim) -> CheckResult:
    """(b) J/token above the FLOP-derived floor, by `FLOOR_MARGIN`."""
    name = "jpt_floor"
    found = _params(claim)
    if claim.energy_j is None:
        return skipped(name, "physics", "energy unmeasured")
    if claim.output_tokens == 0:
        return skipped(name, "physics", "no output tokens in the window")
    if found is None:
        return skipped(name, "physics", f"active parameters of {claim.model!r} unknown")
    active, precision = found
    floor = jpt_floor(active, claim.gpu_name, precision)
    if floor is None:
        return skipped(name, "physics", f"GPU {claim.gpu_name!r} not in gpus.csv")
    jpt = claim.energy_j / claim.output_tokens
    if jpt < floor:
        return CheckResult(
            name, False, "physics", f"{jpt:.4g} J/token below the physics floor {floor:.4g}"
        )
    if jpt < floor * FLOOR_MARGIN:
        return CheckResult(
            name,
            False,
            "data",
            f"{jpt:.4g} J/token within {FLOOR_MARGIN}x of the floor {floor:.4g} "
            "(best measured: 2.8x)",
        )
    return CheckResult(name, True, "physics", f"{jpt:.4g} J/token = {jpt / floor:.1f}x floor")


def _fitted(claim: EnergyClaim, reference: ReferenceFit | None) -> FittedBands | str:
    params = model_params(claim.model)
    found = _params(claim)
    if found is None:
        return f"active parameters of {claim.model!r} unknown"
    active, precision = found
    total = params.total_b if params is not None else active
    fitted = (reference or reference_fit()).bands(
        claim.gpu_name,
        claim.model,
        active,
        max(total, active),
        precision,
        claim.num_gpus,
        claim.concurrency,
    )
    if isinstance(fitted, str):
        return fitted
    found_refs = _refs(claim, reference)
    if isinstance(found_refs, str):
        return fitted
    refs, where = found_refs
    batches = [c.avg_batch for c in refs]
    if not min(batches) / BATCH_WINDOW <= claim.concurrency <= max(batches) * BATCH_WINDOW:
        return fitted  # the nearest references are too far in batch to bound the claim

    def both(band: tuple[float, float], values: Sequence[float]) -> tuple[float, float]:
        return (
            max(band[0], min(values) / BAND_TOLERANCE),
            min(band[1], max(values) * BAND_TOLERANCE),
        )

    return FittedBands(
        jpt=both(fitted.jpt, [c.j_per_token for c in refs]),
        tokens_per_s_per_gpu=both(
            fitted.tokens_per_s_per_gpu, [c.tokens_per_s / c.num_gpus for c in refs]
        ),
        basis=f"{fitted.basis}; within x/{BAND_TOLERANCE:g} of {where}",
    )


def _refs(
    claim: EnergyClaim, reference: ReferenceFit | None = None
) -> tuple[list[MlEnergyConfig], str] | str:
    found = _params(claim)
    if found is None:
        return f"active parameters of {claim.model!r} unknown"
    if gpu_key(claim.gpu_name) is None:
        return f"GPU {claim.gpu_name!r} not in gpus.csv"
    configs = None if reference is None else reference.configs
    refs = reference_configs(claim.gpu_name, found[0], claim.concurrency, configs)
    if not refs:
        return f"no ML.ENERGY data for GPU {gpu_key(claim.gpu_name)}, size class of {found[0]}B"
    batches = sorted(c.avg_batch for c in refs)
    where = (
        f"{len(refs)} ML.ENERGY configs on {gpu_key(claim.gpu_name)}, "
        f"class of {found[0]:g}B active, batch {batches[0]:g}-{batches[-1]:g}"
    )
    return refs, where


def _band_verdict(value: float, band: tuple[float, float]) -> str:
    if value < band[0]:
        return "below"
    return "above" if value > band[1] else "inside"


def check_jpt_band(claim: EnergyClaim, reference: ReferenceFit | None = None) -> CheckResult:
    """(b) J/token inside the fitted band for the GPU, model and concurrency (docstring).

    Outside either side is a "data" failure: above is a less efficient engine than any
    measured, below a more efficient one (the physics floor is `check_jpt_floor`).
    """
    name = "jpt_band"
    if claim.energy_j is None:
        return skipped(name, "data", "energy unmeasured")
    if claim.output_tokens == 0:
        return skipped(name, "data", "no output tokens in the window")
    found = _fitted(claim, reference)
    if isinstance(found, str):
        return skipped(name, "data", found)
    jpt = claim.energy_j / claim.output_tokens
    low, high = found.jpt
    verdict = _band_verdict(jpt, found.jpt)
    return CheckResult(
        name,
        verdict == "inside",
        "data",
        f"{jpt:.4g} J/token {verdict} [{low:.4g}, {high:.4g}] ({found.basis})",
    )


def check_throughput(claim: EnergyClaim, reference: ReferenceFit | None = None) -> CheckResult:
    """(c) Output tokens/s per GPU inside the fitted band (two-sided, see the docstring).

    Above: faster than measured (inflated tokens); below: slower than the GPU runs at
    that concurrency (an inefficient engine, or deflated tokens). Both are "data".
    """
    name = "throughput_band"
    if claim.duration_s <= 0:
        return CheckResult(name, False, "consistency", "window duration not positive")
    found = _fitted(claim, reference)
    if isinstance(found, str):
        return skipped(name, "data", found)
    rate = claim.output_tokens / claim.duration_s / claim.num_gpus
    low, high = found.tokens_per_s_per_gpu
    verdict = _band_verdict(rate, found.tokens_per_s_per_gpu)
    return CheckResult(
        name,
        verdict == "inside",
        "data",
        f"{rate:.4g} tokens/s per GPU {verdict} [{low:.4g}, {high:.4g}] ({found.basis})",
    )


def check_power_band(claim: EnergyClaim, reference: ReferenceFit | None = None) -> CheckResult:
    """Power per GPU inside the band measured for the GPU, size class and concurrency."""
    name = "power_band"
    if claim.avg_power_w is None:
        return skipped(name, "data", "no average power reported")
    found = _refs(claim, reference)
    if isinstance(found, str):
        return skipped(name, "data", found)
    refs, where = found
    low = min(c.power_per_gpu_w for c in refs) / BAND_TOLERANCE
    high = max(c.power_per_gpu_w for c in refs) * BAND_TOLERANCE
    per_gpu = claim.avg_power_w / claim.num_gpus
    ok = low <= per_gpu <= high
    verdict = "inside" if ok else "outside"
    return CheckResult(
        name, ok, "data", f"{per_gpu:.0f} W per GPU {verdict} [{low:.0f}, {high:.0f}] ({where})"
    )


def check_claim(claim: EnergyClaim, reference: ReferenceFit | None = None) -> list[CheckResult]:
    """Every physics, data and consistency check of one window.

    `reference` replaces the fit over all ML.ENERGY data (e.g. one refitted without a
    model, to see how the bands judge a model they have not seen).
    """
    return [
        check_power_range(claim),
        check_energy_power_consistency(claim),
        check_jpt_floor(claim),
        check_jpt_band(claim, reference),
        check_throughput(claim, reference),
        check_power_band(claim, reference),
    ]


def claim_from_attestation(attestation: Attestation, model: str) -> EnergyClaim:
    """The claim one protocol attestation makes, for the model its provider serves."""
    gpus_read = attestation.gpus
    energy = None
    if attestation.energy_method != "unmeasured" and gpus_read:
        energy = sum((g.energy_mj_end or 0) - (g.energy_mj_start or 0) for g in gpus_read) / 1000.0
    powers = [g.avg_power_mw for g in gpus_read]
    limits = [g.power_limit_mw for g in gpus_read if g.power_limit_mw is not None]
    return EnergyClaim(
        gpu_name=gpus_read[0].name if gpus_read else "unknown",
        num_gpus=max(1, len(gpus_read)),
        model=model,
        concurrency=attestation.avg_running_requests_milli / 1000.0,
        energy_j=energy,
        output_tokens=attestation.tokens.generation_tokens_end
        - attestation.tokens.generation_tokens_start,
        duration_s=(attestation.window_end - attestation.window_start) / 1000.0,
        avg_power_w=None if not powers or None in powers else sum(p or 0 for p in powers) / 1e3,
        power_limit_w=min(limits) / 1000.0 if limits else None,
    )


# --- counter hygiene over consecutive attestations -------------------------------------


def check_chain_link(previous: Attestation | None, current: Attestation) -> CheckResult:
    """(d) No chain gap: seq follows by one and prev_hash is the previous digest."""
    name = "chain_link"
    if previous is None:
        ok = current.seq == 0
        return CheckResult(name, ok, "hygiene", f"first attestation has seq {current.seq}")
    if current.seq != previous.seq + 1:
        return CheckResult(
            name, False, "hygiene", f"seq {current.seq} does not follow {previous.seq} (gap)"
        )
    if current.prev_hash != message_digest(previous):
        return CheckResult(name, False, "hygiene", f"prev_hash of seq {current.seq} mismatched")
    return CheckResult(name, True, "hygiene", f"seq {current.seq} follows {previous.seq}")


def check_counters_monotonic(previous: Attestation, current: Attestation) -> CheckResult:
    """(d) Token and energy counters do not go back between consecutive windows."""
    name = "counters_monotonic"
    p, c = previous.tokens, current.tokens
    if c.generation_tokens_start < p.generation_tokens_end:
        return CheckResult(name, False, "hygiene", "generation token counter went back")
    if c.prompt_tokens_start < p.prompt_tokens_end:
        return CheckResult(name, False, "hygiene", "prompt token counter went back")
    before = {g.uuid: g.energy_mj_end for g in previous.gpus}
    for gpu in current.gpus:
        end = before.get(gpu.uuid)
        if end is not None and gpu.energy_mj_start is not None and gpu.energy_mj_start < end:
            return CheckResult(name, False, "hygiene", f"energy counter of {gpu.uuid} went back")
    if set(before) != {g.uuid for g in current.gpus}:
        return CheckResult(name, False, "hygiene", "the set of GPUs changed")
    return CheckResult(name, True, "hygiene", "counters monotonic")


def check_window_length(
    current: Attestation,
    previous: Attestation | None = None,
    *,
    min_ms: int = MIN_WINDOW_MS,
    max_ms: int = MAX_WINDOW_MS,
    max_gap_ms: int = MAX_GAP_MS,
) -> CheckResult:
    """(d) Window between `min_ms` and `max_ms`, starting at most `max_gap_ms` after the last."""
    name = "window_length"
    length = current.window_end - current.window_start
    if not min_ms <= length <= max_ms:
        return CheckResult(
            name, False, "hygiene", f"window of {length} ms outside [{min_ms}, {max_ms}]"
        )
    if previous is not None:
        gap = current.window_start - previous.window_end
        if gap < 0 or gap > max_gap_ms:
            return CheckResult(
                name, False, "hygiene", f"{gap} ms between windows outside [0, {max_gap_ms}]"
            )
    return CheckResult(name, True, "hygiene", f"window of {length} ms")


def check_tokens_vs_receipts(
    attested_tokens: int, receipt_tokens: Sequence[int], *, max_request_tokens: int = 0
) -> CheckResult:
    """(d) Attested generation-token delta vs the completion tokens of receipts in the window.

    Requests straddle window edges, so the sums may differ by `RECEIPT_TOKEN_TOLERANCE` plus
    one request's worth (`max_request_tokens`, e.g. the largest ticket max_tokens). Only
    receipts for more tokens than the engine counted fail: buyers billed for tokens never
    generated. An engine count beyond the receipts passes with the surplus stated: off-market
    traffic and calibration runs explain it, and inflated counters are what the J/token and
    throughput bands catch.
    """
    name = "tokens_vs_receipts"
    total = sum(receipt_tokens)
    slack = RECEIPT_TOKEN_TOLERANCE * max(attested_tokens, total) + max_request_tokens
    figures = f"attested {attested_tokens} tokens, receipts {total} ({len(receipt_tokens)})"
    if total - attested_tokens > slack:
        return CheckResult(
            name,
            False,
            "consistency",
            f"{figures}: receipts exceed the engine's count by more than {slack:.0f}",
        )
    if attested_tokens - total > slack:
        return CheckResult(
            name,
            True,
            "consistency",
            f"{figures}: the engine counted {attested_tokens - total} tokens beyond the "
            f"receipts (more than {slack:.0f}; off-market traffic or calibration)",
        )
    return CheckResult(name, True, "consistency", f"{figures}: match within {slack:.0f}")


def known_gpus() -> list[str]:
    """The GPU keys checks can run for."""
    return list(gpus())
