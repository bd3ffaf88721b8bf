"""Checks of one receipt's timing and energy against physics and ML.ENERGY's measurements.

A receipt's energy is its attributed share of the provider's GPU energy (output-token
weighted, `provider_agent/energy/attribution.py`), so only bounds that hold for any share
are checked here; the measured J/token band is a window check (`plausibility.py`).
Results follow `plausibility.CheckResult`: `ok` None is "skipped" (never a pass), and
`kind` is "physics", "data", "consistency" or "hygiene".

The checks:

- `timing_order` (consistency): the first token is not before the market issued the
  ticket, and the receipt did not finish before its first token. The ticket time is the
  market's clock and the others the provider's, so they may disagree by
  `CLOCK_SKEW_MS` (the protocol's `DEFAULT_MAX_CLOCK_SKEW_MS`).
- `decode_speed` (data): completion tokens / (finished - first token) is at most
  `DECODE_SPEED_TOLERANCE` x the fastest per-sequence decode rate measured on the GPU in
  the model's active-parameter size class, where one configuration's per-sequence rate is
  its tokens/s / average batch (`per_sequence_ceiling`). ML.ENERGY's lowest batch is about
  8 (32 on the A100 rows), and a lone request on an idle GPU, on more GPUs (tensor
  parallel) or with speculative decoding decodes faster than one of 8; the tolerance
  covers that. Skipped under `MIN_DECODE_S` of decode or `MIN_DECODE_TOKENS` tokens:
  streamed tokens arrive in bursts, so short spans say nothing about the rate.
- `receipt_jpt_floor` (physics): energy / completion tokens is not below the FLOP-derived
  floor (`plausibility.jpt_floor`). A share weighted by output tokens of windows that are
  each above the floor is above it too; the band is not checked per receipt.
- `receipt_power` (physics): energy / (finished - ticket issued + `CLOCK_SKEW_MS`) is not
  above num_gpus x the power limit (+ `POWER_LIMIT_TOLERANCE`). From ticket issue to
  finish is the widest interval the request's energy can have been spent in, so
  queueing and prefill cannot cause a false flag; without the issue time it is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

from market.energy.data import (
    GpuSpec,
    ModelParams,
    gpu_key,
    gpu_spec,
    mlenergy_configs,
    model_params,
)
from market.energy.plausibility import (
    POWER_LIMIT_TOLERANCE,
    CheckResult,
    jpt_floor,
    size_class,
    skipped,
)
from protocol.messages import DEFAULT_MAX_CLOCK_SKEW_MS

CLOCK_SKEW_MS = DEFAULT_MAX_CLOCK_SKEW_MS
"""Market and provider clocks may disagree by this much (the protocol's ticket skew)."""
DECODE_SPEED_TOLERANCE = 4.0
"""A lone sequence may decode this many times faster than the fastest measured one."""
MIN_DECODE_S = 1.0
"""Decode spans shorter than this are not rate-checked."""
MIN_DECODE_TOKENS = 32
"""Receipts with fewer completion tokens are not rate-checked."""


@dataclass(frozen=True)
class ReceiptClaim:
    """The figures of one receipt (and its ticket and provider) that the checks read."""

    gpu_name: str | None
    """The provider's GPU model (from its attestations or registration); None if unknown."""
    num_gpus: int
    """GPUs serving the model, >= 1."""
    power_limit_w: float | None
    """Enforced limit of one GPU; None if unknown (the datasheet TDP is used)."""
    model: str
    prompt_tokens: int
    completion_tokens: int
    energy_method: str
    """"measured", "estimated" or "unmeasured"."""
    energy_j: float | None
    """The receipt's attributed GPU energy; None when unmeasured."""
    first_token_at_ms: int | None
    finished_at_ms: int
    ticket_issued_at_ms: int | None
    """When the market issued the job ticket (market clock)."""


# The checks run once per receipt (the receipt-check pass, `market/reviews/receipts.py`), on a
# few distinct models and GPUs: their lookups in the static data (name parsing, gpus.csv) are
# memoised, bounded, since the names come from receipts and attestations.
@lru_cache(maxsize=256)
def _model_params(model: str) -> ModelParams | None:
    return model_params(model)


@lru_cache(maxsize=256)
def _gpu_spec(name: str) -> GpuSpec | None:
    return gpu_spec(name)


@lru_cache(maxsize=1024)
def _jpt_floor(active_b: float, gpu: str, precision: str) -> float | None:
    return jpt_floor(active_b, gpu, precision)


@cache
def per_sequence_ceiling(gpu: str, active_b: float) -> tuple[float, str] | None:
    """The fastest measured tokens/s of one sequence on `gpu` in the size class of `active_b`.

    Max over the ML.ENERGY configurations on that GPU model and size class of tokens/s /
    average batch, with a description of the configuration; None without data.
    """
    key = gpu_key(gpu)
    if key is None:
        return None
    group = [
        config
        for config in mlenergy_configs()
        if config.gpu_spec == key and size_class(config.params.active_b) == size_class(active_b)
    ]
    if not group:
        return None
    best = max(group, key=lambda c: c.tokens_per_s / c.avg_batch)
    rate = best.tokens_per_s / best.avg_batch
    where = f"{best.model} on {best.num_gpus}x {key} at batch {best.avg_batch:g}"
    return rate, where


def check_timing_order(claim: ReceiptClaim) -> CheckResult:
    """Ticket issued <= first token <= finished (ticket vs provider clock: `CLOCK_SKEW_MS`)."""
    name = "timing_order"
    first, finished, issued = (
        claim.first_token_at_ms,
        claim.finished_at_ms,
        claim.ticket_issued_at_ms,
    )
    if first is not None and finished < first:
        return CheckResult(
            name,
            False,
            "consistency",
            f"finished at {finished} ms, {first - finished} ms before the first token",
        )
    start = first if first is not None else finished
    if issued is not None and start + CLOCK_SKEW_MS < issued:
        what = "first token" if first is not None else "finish"
        return CheckResult(
            name,
            False,
            "consistency",
            f"{what} at {start} ms, {issued - start} ms before the ticket was issued "
            f"(clock skew allowed: {CLOCK_SKEW_MS} ms)",
        )
    if issued is None and first is None:
        return skipped(name, "consistency", "no ticket issue time and no first token")
    return CheckResult(name, True, "consistency", "ticket, first token and finish in order")


def check_decode_speed(claim: ReceiptClaim) -> CheckResult:
    """Completion tokens per second of decode below the per-sequence ceiling (docstring)."""
    name = "decode_speed"
    if claim.first_token_at_ms is None:
        return skipped(name, "data", "no first token")
    span_s = (claim.finished_at_ms - claim.first_token_at_ms) / 1000.0
    if span_s < MIN_DECODE_S:
        return skipped(name, "data", f"decode span {span_s:.3f} s under {MIN_DECODE_S:g} s")
    if claim.completion_tokens < MIN_DECODE_TOKENS:
        return skipped(name, "data", f"{claim.completion_tokens} tokens, under {MIN_DECODE_TOKENS}")
    if claim.gpu_name is None:
        return skipped(name, "data", "GPU unknown")
    params = _model_params(claim.model)
    if params is None:
        return skipped(name, "data", f"active parameters of {claim.model!r} unknown")
    found = per_sequence_ceiling(claim.gpu_name, params.active_b)
    if found is None:
        return skipped(
            name, "data", f"no ML.ENERGY data for {claim.gpu_name!r}, class of {params.active_b:g}B"
        )
    measured, where = found
    ceiling = measured * DECODE_SPEED_TOLERANCE
    rate = claim.completion_tokens / span_s
    ok = rate <= ceiling
    verdict = "within" if ok else "above"
    return CheckResult(
        name,
        ok,
        "data",
        f"{rate:.4g} tokens/s for one sequence {verdict} {DECODE_SPEED_TOLERANCE:g}x the "
        f"fastest measured {measured:.4g} ({where})",
    )


def _energy(claim: ReceiptClaim) -> float | str:
    if claim.energy_method == "unmeasured" or claim.energy_j is None:
        return "energy unmeasured"
    return claim.energy_j


def check_receipt_jpt_floor(claim: ReceiptClaim) -> CheckResult:
    """Attributed J per completion token not below the FLOP-derived floor."""
    name = "receipt_jpt_floor"
    energy = _energy(claim)
    if isinstance(energy, str):
        return skipped(name, "physics", energy)
    if claim.completion_tokens == 0:
        return skipped(name, "physics", "no completion tokens")
    if claim.gpu_name is None:
        return skipped(name, "physics", "GPU unknown")
    params = _model_params(claim.model)
    if params is None:
        return skipped(name, "physics", f"active parameters of {claim.model!r} unknown")
    floor = _jpt_floor(params.active_b, claim.gpu_name, params.precision)
    if floor is None:
        return skipped(name, "physics", f"GPU {claim.gpu_name!r} not in gpus.csv")
    jpt = energy / claim.completion_tokens
    if jpt < floor:
        return CheckResult(
            name, False, "physics", f"{jpt:.4g} J/token below the physics floor {floor:.4g}"
        )
    return CheckResult(name, True, "physics", f"{jpt:.4g} J/token = {jpt / floor:.1f}x floor")


def check_receipt_power(claim: ReceiptClaim) -> CheckResult:
    """Attributed energy over ticket issue -> finish not above the GPUs' power limit."""
    name = "receipt_power"
    energy = _energy(claim)
    if isinstance(energy, str):
        return skipped(name, "physics", energy)
    if claim.ticket_issued_at_ms is None:
        return skipped(name, "physics", "ticket issue time unknown")
    spec = _gpu_spec(claim.gpu_name) if claim.gpu_name is not None else None
    limits = [float(spec.tdp_w)] if spec is not None else []
    if claim.power_limit_w is not None:
        limits.append(claim.power_limit_w)
    if not limits:
        return skipped(name, "physics", f"power limit of GPU {claim.gpu_name!r} unknown")
    limit = min(limits) * max(1, claim.num_gpus)
    span_s = (claim.finished_at_ms - claim.ticket_issued_at_ms + CLOCK_SKEW_MS) / 1000.0
    ceiling = limit * POWER_LIMIT_TOLERANCE * max(span_s, 0.0)
    ok = energy <= ceiling
    verdict = "within" if ok else "above"
    return CheckResult(
        name,
        ok,
        "physics",
        f"{energy:.4g} J {verdict} {limit:.0f} W x {span_s:.3f} s (ticket issue to finish "
        f"+ {CLOCK_SKEW_MS} ms skew, +2 %) = {ceiling:.4g} J",
    )


def check_receipt_claim(claim: ReceiptClaim) -> list[CheckResult]:
    """Every timing, speed and energy check of one receipt."""
    return [
        check_timing_order(claim),
        check_decode_speed(claim),
        check_receipt_jpt_floor(claim),
        check_receipt_power(claim),
    ]
