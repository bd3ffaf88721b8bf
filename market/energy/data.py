"""Reference data for energy accounting, loaded once from the CSVs shipped in this package.

The CSVs in `market/energy/data/` are copies of `shared/data/`, except `fx_rates.csv`
(ECB reference rates); sources in `SOURCES.md`.
They are read with `importlib.resources`, so they ship inside the wheel. Every figure keeps
its source, its year and whether it is verified; a cell that is empty in the CSV is `None`
here, never a guess.

Numbers that feed money (tariffs) are `Decimal`s parsed from the CSV text, never floats.
Figures used only for plausibility (J/token, power, tokens/s) are floats.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources

DATA_PACKAGE = "market.energy"
DATA_DIR = "data"


@dataclass(frozen=True)
class Figure:
    """One published number with where it came from."""

    value: Decimal
    unit: str
    source: str
    year: int | None
    verified: bool
    note: str = ""


@dataclass(frozen=True)
class RegionDefault:
    """A region's default tariff and grid carbon intensity (either may be unknown)."""

    region: str
    name: str
    tariff: Figure | None
    """Price of a kWh in `currency` (unit "<CUR>/kWh"); None where the CSV has no price."""
    currency: str | None
    price_basis: str
    grid_intensity: Figure | None
    """Grid carbon intensity, unit "gCO2/kWh"; None where unknown."""
    verified_note: str
    """The CSV's `verified` cell as written ("yes", "price unverified", "dated", ...)."""


@dataclass(frozen=True)
class PueProfile:
    """Power usage effectiveness of a kind of site."""

    profile: str
    pue: Figure


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet figures of one GPU model, plus power observed under vLLM where measured."""

    name: str
    tdp_w: int
    bf16_dense_tflops: Decimal
    mem_gb: int
    mem_bw_tbs: Decimal
    observed_power_w: tuple[int, int] | None
    idle_note: str
    idle_w: tuple[int, int] | None
    """Idle draw with a model loaded, parsed from the note where it gives numbers."""
    source: str

    @property
    def peak_flops_per_joule_bf16(self) -> float:
        """Dense BF16 FLOP per joule at the datasheet peak and the power limit."""
        return float(self.bf16_dense_tflops) * 1e12 / self.tdp_w


@dataclass(frozen=True)
class ModelParams:
    """Parameter counts of one model, and how they were obtained."""

    active_b: float
    """Parameters used per generated token, in billions."""
    total_b: float
    rule: str
    """"name" (parsed from the name), "name-active" (an -A<n>B suffix) or "table"."""
    precision: str
    """Weight precision: "bf16", "fp8" (an -FP8 suffix) or "mxfp4"."""


@dataclass(frozen=True)
class MlEnergyConfig:
    """One measured vLLM configuration from ML.ENERGY (GPU energy only)."""

    source: str
    model: str
    task: str
    gpu: str
    """The GPU name as ML.ENERGY writes it."""
    gpu_spec: str
    """The key of the matching row in gpus.csv."""
    num_gpus: int
    max_num_seqs: int
    avg_batch: float
    j_per_token: float
    j_per_request: float
    avg_power_w: float
    """Total over the GPUs. v2.0 rows have no power column: there it is J/token x tokens/s."""
    power_derived: bool
    tokens_per_s: float
    median_itl_ms: float
    avg_output_len: float
    params: ModelParams

    @property
    def power_per_gpu_w(self) -> float:
        return self.avg_power_w / self.num_gpus


# Parameter counts the name does not give (MoE totals, or names without a size), in
# billions: (active, total). Sources: each model's card on Hugging Face.
EXPLICIT_PARAMS: dict[str, tuple[float, float]] = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (12.9, 46.7),
    "mistralai/Mixtral-8x22B-Instruct-v0.1": (39.0, 141.0),
    "deepseek-ai/DeepSeek-V3.1": (37.0, 671.0),
    "deepseek-ai/DeepSeek-R1-0528": (37.0, 671.0),
    "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8": (17.0, 400.0),
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": (17.0, 109.0),
    "openai/gpt-oss-120b": (5.1, 117.0),
    "openai/gpt-oss-20b": (3.6, 21.0),
    "microsoft/Phi-3-mini-4k-instruct": (3.8, 3.8),
    "microsoft/Phi-3-small-8k-instruct": (7.4, 7.4),
    "microsoft/Phi-3-medium-4k-instruct": (14.0, 14.0),
    "mistralai/Mistral-Large-Instruct-2407": (123.0, 123.0),
    "mistralai/Mistral-Nemo-Instruct-2407": (12.2, 12.2),
}

_ACTIVE = re.compile(r"-A(\d+(?:\.\d+)?)B(?:-|$)")
_SIZE = re.compile(r"(?:^|[-_/])(\d+(?:\.\d+)?)[bB](?:-|_|$)")
_MXFP4 = frozenset({"openai/gpt-oss-120b", "openai/gpt-oss-20b"})


def model_params(model: str) -> ModelParams | None:
    """Active and total parameters of `model` (a Hugging Face id), or None if unknown.

    The rule, in order: the explicit table above (MoE models whose name gives no active
    count, and names without a size); an `-A<n>B` part gives the active count and the
    first `<n>B` part the total (Qwen3 MoE: `Qwen3-235B-A22B` -> 22B active of 235B);
    otherwise the first `<n>B` part (case-insensitive) is both (dense models).
    Precision: an `-FP8` suffix -> "fp8"; gpt-oss -> "mxfp4"; else "bf16".
    """
    precision = "fp8" if model.upper().endswith("-FP8") else "bf16"
    if model in _MXFP4:
        precision = "mxfp4"
    if model in EXPLICIT_PARAMS:
        active, total = EXPLICIT_PARAMS[model]
        return ModelParams(active, total, "table", precision)
    size = _SIZE.search(model.split("/")[-1])
    if size is None:
        return None
    total = float(size.group(1))
    active_match = _ACTIVE.search(model)
    if active_match is not None:
        return ModelParams(float(active_match.group(1)), total, "name-active", precision)
    return ModelParams(total, total, "name", precision)


def _text(name: str) -> str:
    return resources.files(DATA_PACKAGE).joinpath(DATA_DIR, name).read_text(encoding="utf-8")


def _rows(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_text(name))))


def _int_or_none(cell: str) -> int | None:
    return int(cell) if cell.strip() else None


# How the CSV's `verified` cell applies to each figure of a region (price, carbon).
_VERIFIED: dict[str, tuple[bool, bool]] = {
    "yes": (True, True),
    "price unverified": (False, True),
    "price unknown": (False, True),
    "dated": (False, True),
    "approximate": (False, False),
}


@cache
def regions() -> dict[str, RegionDefault]:
    """Regional defaults keyed by region code (e.g. "US-VA", "DE")."""
    out: dict[str, RegionDefault] = {}
    for row in _rows("energy_regions.csv"):
        price_ok, carbon_ok = _VERIFIED.get(row["verified"], (False, False))
        currency = row["currency"] or None
        tariff = None
        if row["price"] and currency is not None:
            tariff = Figure(
                value=Decimal(row["price"]),
                unit=f"{currency}/kWh",
                source=row["price_source"],
                year=_int_or_none(row["price_year"]),
                verified=price_ok,
                note=row["price_basis"],
            )
        carbon = None
        if row["grid_gco2_per_kwh"]:
            carbon = Figure(
                value=Decimal(row["grid_gco2_per_kwh"]),
                unit="gCO2/kWh",
                source=row["carbon_source"],
                year=_int_or_none(row["carbon_year"]),
                verified=carbon_ok,
            )
        out[row["region"]] = RegionDefault(
            region=row["region"],
            name=row["name"],
            tariff=tariff,
            currency=currency,
            price_basis=row["price_basis"],
            grid_intensity=carbon,
            verified_note=row["verified"],
        )
    return out


@cache
def fx_rates() -> dict[str, Figure]:
    """US dollars per unit of each tariff currency (ECB reference rates, 2023 averages).

    Keyed by ISO currency code; each `Figure` has unit "USD/<CUR>" and the CSV's source.
    """
    out: dict[str, Figure] = {}
    for row in _rows("fx_rates.csv"):
        currency = row["currency"]
        out[currency] = Figure(
            value=Decimal(row["usd_per_unit"]),
            unit=f"USD/{currency}",
            source=row["source"],
            year=_int_or_none(row["year"]),
            verified=True,
        )
    return out


@cache
def pue_profiles() -> dict[str, PueProfile]:
    """PUE profiles keyed by name (e.g. "industry_average" 1.56)."""
    out: dict[str, PueProfile] = {}
    for row in _rows("pue.csv"):
        assumption = "assumption" in row["source"]
        year = re.search(r"\b(20\d\d)\b", row["source"])
        out[row["profile"]] = PueProfile(
            profile=row["profile"],
            pue=Figure(
                value=Decimal(row["pue"]),
                unit="",
                source=row["source"],
                year=int(year.group(1)) if year else None,
                verified=not assumption,
            ),
        )
    return out


def _range(cell: str) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\s*-\s*(\d+)", cell)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def _idle(note: str) -> tuple[int, int] | None:
    found = _range(note)
    if found is not None:
        return found
    single = re.search(r"(\d+)\s*W", note)
    if single is None:
        return None
    return int(single.group(1)), int(single.group(1))


@cache
def gpus() -> dict[str, GpuSpec]:
    """GPU datasheet figures keyed by the gpus.csv name (e.g. "H100-SXM")."""
    out: dict[str, GpuSpec] = {}
    for row in _rows("gpus.csv"):
        out[row["gpu"]] = GpuSpec(
            name=row["gpu"],
            tdp_w=int(row["tdp_w"]),
            bf16_dense_tflops=Decimal(row["bf16_dense_tflops"]),
            mem_gb=int(row["mem_gb"]),
            mem_bw_tbs=Decimal(row["mem_bw_tbs"]),
            observed_power_w=_range(row["observed_power_under_vllm_w"]),
            idle_note=row["idle_w_note"],
            idle_w=_idle(row["idle_w_note"]),
            source=row["source"],
        )
    return out


# ML.ENERGY's GPU names and NVML's product names -> gpus.csv keys, as (pattern, key);
# first match wins, on the name upper-cased with "NVIDIA " and "GEFORCE " removed.
_GPU_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"^H100.*PCIE", "H100-PCIe"),
    (r"^H100", "H100-SXM"),
    (r"^H200", "H200-SXM"),
    (r"^A100.*40GB", "A100-SXM4-40GB"),
    (r"^A100", "A100-SXM4-80GB"),
    (r"^B200", "B200"),
    (r"^L40S", "L40S"),
    (r"^L4\b", "L4"),
    (r"^RTX[- ]?4090", "RTX-4090"),
    (r"^RTX[- ]?3090", "RTX-3090"),
)


def gpu_key(name: str) -> str | None:
    """The gpus.csv key for a GPU name from NVML ("NVIDIA H100 80GB HBM3") or ML.ENERGY."""
    cleaned = name.upper().replace("NVIDIA ", "").replace("GEFORCE ", "").strip()
    if cleaned in {key.upper() for key in gpus()}:
        return next(key for key in gpus() if key.upper() == cleaned)
    for pattern, key in _GPU_PATTERNS:
        if re.search(pattern, cleaned):
            return key
    return None


def gpu_spec(name: str) -> GpuSpec | None:
    """The datasheet row for a GPU name, or None if the GPU is not in gpus.csv."""
    key = gpu_key(name)
    return None if key is None else gpus()[key]


@cache
def mlenergy_configs() -> tuple[MlEnergyConfig, ...]:
    """All 1,029 measured configurations, with parameter counts and per-GPU spec keys."""
    out: list[MlEnergyConfig] = []
    for row in _rows("mlenergy_llm_configs.csv"):
        params = model_params(row["model"])
        key = gpu_key(row["gpu"])
        if params is None or key is None:
            raise ValueError(f"no parameters or GPU spec for {row['model']} on {row['gpu']}")
        j_per_token = float(row["J_per_output_token"])
        tokens_per_s = float(row["output_tok_per_s"])
        derived = not row["avg_power_W_total"]
        power = j_per_token * tokens_per_s if derived else float(row["avg_power_W_total"])
        out.append(
            MlEnergyConfig(
                source=row["source"],
                model=row["model"],
                task=row["task"],
                gpu=row["gpu"],
                gpu_spec=key,
                num_gpus=int(row["num_gpus"]),
                max_num_seqs=int(row["max_num_seqs"]),
                avg_batch=float(row["avg_batch"]),
                j_per_token=j_per_token,
                j_per_request=float(row["J_per_request"]),
                avg_power_w=power,
                power_derived=derived,
                tokens_per_s=tokens_per_s,
                median_itl_ms=float(row["median_itl_ms"]),
                avg_output_len=float(row["avg_output_len"]),
                params=params,
            )
        )
    return tuple(out)
