"""Measured bands of J/token and tokens/s per GPU, fitted over ML.ENERGY's configurations.

Per GPU model, log J/token and log tokens/s per GPU are fitted by least squares
(`FIT_RIDGE`) as linear functions of log active params, log total params (MoE), log batch,
(log batch)^2 (log batch clamped to the GPU's measured range, so no quadratic
extrapolation), log GPU count and log `PRECISION_SPEEDUP`. A claim for a model with at least
`MIN_MODEL_CONFIGS` configurations on that GPU gets the fit plus [min, max] of that model's
residuals; any other model gets the fit plus [min, max] of the residuals of every
configuration of the GPU. Both are widened by `BAND_MARGIN` each way, plus
`EXTRAPOLATION_SLACK` per unit of log batch the claim lies outside the batch range they
cover. `market.energy.plausibility` judges claims against these bands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from market.energy.data import MlEnergyConfig, gpu_key, mlenergy_configs

PRECISION_SPEEDUP = {"bf16": 1.0, "fp8": 2.0, "mxfp4": 4.0}
"""Peak FLOP/s relative to dense BF16 for the weight precision (lowers the floor)."""
BAND_MARGIN = math.log(1.25)
"""Fitted bands are widened by this (log units: x / 1.25 and x 1.25) beyond the residuals."""
MIN_MODEL_CONFIGS = 3
"""A model needs this many configurations on a GPU for a band of its own."""
EXTRAPOLATION_SLACK = 0.5
"""Extra band half-width (log units) per unit of log batch outside the measured range."""
FIT_RIDGE = 1e-6
"""Ridge term of the least-squares fit (keeps it solvable when a regressor is constant)."""


def _features(
    active_b: float,
    total_b: float,
    batch: float,
    num_gpus: int,
    precision: str,
    batch_range: tuple[float, float],
) -> tuple[float, ...]:
    """The regressors of one configuration or claim (module docstring); log batch squared
    is taken at the log batch clamped to the GPU's measured range (no quadratic
    extrapolation)."""
    log_batch = math.log(batch)
    clamped = min(max(log_batch, batch_range[0]), batch_range[1])
    return (
        1.0,
        math.log(active_b),
        math.log(total_b),
        log_batch,
        clamped * clamped,
        math.log(num_gpus),
        math.log(PRECISION_SPEEDUP.get(precision, 1.0)),
    )


def _least_squares(rows: Sequence[Sequence[float]], targets: Sequence[float]) -> list[float]:
    """Coefficients minimising the squared error (+ `FIT_RIDGE` x their squares), by the
    normal equations and Gaussian elimination with partial pivoting."""
    n = len(rows[0])
    matrix = [
        [sum(r[i] * r[j] for r in rows) + (FIT_RIDGE if i == j else 0.0) for j in range(n)]
        + [sum(r[i] * t for r, t in zip(rows, targets, strict=True))]
        for i in range(n)
    ]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(matrix[r][col]))
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        for row in range(n):
            if row != col and matrix[row][col] != 0.0:
                factor = matrix[row][col] / matrix[col][col]
                matrix[row] = [
                    a - factor * b for a, b in zip(matrix[row], matrix[col], strict=True)
                ]
    return [matrix[i][n] / matrix[i][i] for i in range(n)]


@dataclass(frozen=True)
class Spread:
    """The residuals (log units) of a set of configurations around their GPU's fit."""

    jpt: tuple[float, float]
    tokens_per_s: tuple[float, float]
    log_batch: tuple[float, float]
    """The range of log average batch the configurations cover."""
    configs: int


@dataclass(frozen=True)
class GpuFit:
    """The least-squares fit of one GPU model and the residual spreads around it."""

    gpu: str
    jpt_coef: tuple[float, ...]
    tokens_per_s_coef: tuple[float, ...]
    log_batch: tuple[float, float]
    spread: Spread
    """All configurations of the GPU (the band of a model without its own data)."""
    models: dict[str, Spread]
    """Per model (name lower-cased) with at least `MIN_MODEL_CONFIGS` configurations."""


@dataclass(frozen=True)
class FittedBands:
    """The bands one claim is judged against, in J/token and tokens/s per GPU."""

    jpt: tuple[float, float]
    tokens_per_s_per_gpu: tuple[float, float]
    basis: str


def _spread(pairs: Sequence[tuple[MlEnergyConfig, float, float]]) -> Spread:
    batches = [math.log(c.avg_batch) for c, _, _ in pairs]
    return Spread(
        jpt=(min(p[1] for p in pairs), max(p[1] for p in pairs)),
        tokens_per_s=(min(p[2] for p in pairs), max(p[2] for p in pairs)),
        log_batch=(min(batches), max(batches)),
        configs=len(pairs),
    )


def _dot(coef: Sequence[float], features: Sequence[float]) -> float:
    return sum(a * b for a, b in zip(coef, features, strict=True))


class ReferenceFit:
    """Per-GPU fits of log J/token and log tokens/s per GPU over ML.ENERGY configurations."""

    def __init__(self, configs: Sequence[MlEnergyConfig]) -> None:
        self.configs = tuple(configs)
        by_gpu: dict[str, list[MlEnergyConfig]] = {}
        for config in configs:
            by_gpu.setdefault(config.gpu_spec, []).append(config)
        self.gpus: dict[str, GpuFit] = {gpu: self._fit(gpu, group) for gpu, group in by_gpu.items()}

    @staticmethod
    def _fit(gpu: str, group: Sequence[MlEnergyConfig]) -> GpuFit:
        logs = [math.log(c.avg_batch) for c in group]
        batch_range = (min(logs), max(logs))
        rows = [
            _features(
                c.params.active_b,
                c.params.total_b,
                c.avg_batch,
                c.num_gpus,
                c.params.precision,
                batch_range,
            )
            for c in group
        ]
        jpt_y = [math.log(c.j_per_token) for c in group]
        rate_y = [math.log(c.tokens_per_s / c.num_gpus) for c in group]
        jpt_coef = _least_squares(rows, jpt_y)
        rate_coef = _least_squares(rows, rate_y)
        pairs = [
            (c, jy - _dot(jpt_coef, x), ry - _dot(rate_coef, x))
            for c, x, jy, ry in zip(group, rows, jpt_y, rate_y, strict=True)
        ]
        per_model: dict[str, list[tuple[MlEnergyConfig, float, float]]] = {}
        for pair in pairs:
            per_model.setdefault(pair[0].model.lower(), []).append(pair)
        return GpuFit(
            gpu=gpu,
            jpt_coef=tuple(jpt_coef),
            tokens_per_s_coef=tuple(rate_coef),
            log_batch=batch_range,
            spread=_spread(pairs),
            models={
                model: _spread(found)
                for model, found in per_model.items()
                if len(found) >= MIN_MODEL_CONFIGS
            },
        )

    def bands(
        self,
        gpu: str,
        model: str,
        active_b: float,
        total_b: float,
        precision: str,
        num_gpus: int,
        concurrency: float,
    ) -> FittedBands | str:
        """The bands for a claim, or why there are none (module docstring)."""
        key = gpu_key(gpu)
        fit = self.gpus.get(key) if key is not None else None
        if fit is None:
            return f"no ML.ENERGY data for GPU {gpu!r}"
        if concurrency <= 0:
            return "no running requests in the window"
        features = _features(
            active_b, total_b, concurrency, max(1, num_gpus), precision, fit.log_batch
        )
        spread = fit.models.get(model.lower())
        if spread is not None:
            basis = f"{model} on {key}: {spread.configs} ML.ENERGY configs"
        else:
            spread = fit.spread
            basis = f"{key} fit over {spread.configs} ML.ENERGY configs (model not measured)"
        log_batch = math.log(concurrency)
        outside = max(0.0, spread.log_batch[0] - log_batch, log_batch - spread.log_batch[1])
        margin = BAND_MARGIN + EXTRAPOLATION_SLACK * outside
        basis += f", batch {math.exp(spread.log_batch[0]):.3g}-{math.exp(spread.log_batch[1]):.3g}"

        def band(coef: Sequence[float], residuals: tuple[float, float]) -> tuple[float, float]:
            centre = _dot(coef, features)
            return (
                math.exp(centre + residuals[0] - margin),
                math.exp(centre + residuals[1] + margin),
            )

        return FittedBands(
            jpt=band(fit.jpt_coef, spread.jpt),
            tokens_per_s_per_gpu=band(fit.tokens_per_s_coef, spread.tokens_per_s),
            basis=basis,
        )


@cache
def reference_fit() -> ReferenceFit:
    """The fit over all 1,029 ML.ENERGY configurations."""
    return ReferenceFit(mlenergy_configs())
