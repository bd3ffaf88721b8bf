"""Calibration: steady-state throughput and energy per output token at fixed concurrency.

The method is ML.ENERGY's (shared/data/README.md): keep `n` requests in flight against
the local vLLM, let the run settle for a warm-up, then read the energy meter and vLLM's
token counters (`/metrics`) at both ends of a steady-state window.

    tokens/s  = generation-token delta / window seconds
    J/token   = window energy / generation-token delta   (prefill folded into output tokens)

Requests use `ignore_eos` with a fixed `max_tokens`, so output lengths are controlled.
A meter that cannot measure gives `joules_per_token = None` with its method, never a
guess. The result is signed as a `calibration` message (docs/agent-protocol.md,
section "Calibration") and saved to `data_dir/calibration.json`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
from nacl.exceptions import BadSignatureError

from protocol.canonical import JsonValue, from_hex, signing_input, to_hex
from protocol.errors import MalformedMessageError
from protocol.keys import ProviderIdentity, verify_key_from_hex
from protocol.messages import Domain
from provider_agent.appending import replace_durably
from provider_agent.energy import (
    EnergyMeter,
    EnergyReading,
    MeterInfo,
    Method,
    WindowEnergy,
    window_energy,
)
from provider_agent.engine.errors import EngineError
from provider_agent.engine.metrics import EngineCounters, afetch_engine_counters

TYPE_TAG = "calibration"
VERSION = 1
FILE_NAME = "calibration.json"
DEFAULT_PROMPT = "Write a long story about a lighthouse keeper and the sea."
NS_PER_S = 1_000_000_000

Progress = Callable[[int, float, float, str], None]
"""Called as `(concurrency, elapsed_s, total_s, phase)`; phase is warmup|window|drain."""


class CalibrationError(Exception):
    """The calibration could not be run, signed, saved or read back."""


@dataclass(frozen=True)
class CalibrationPlan:
    """What to run: concurrency levels, warm-up and window seconds, output length."""

    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    max_tokens: int
    prompt: str = DEFAULT_PROMPT
    sample_interval_s: float = 0.5
    drain_timeout_s: float = 30.0
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        """Reject plans that cannot measure anything."""
        if not self.concurrency or any(level < 1 for level in self.concurrency):
            raise CalibrationError("concurrency levels must be positive integers")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.max_tokens < 1:
            raise CalibrationError("duration must be > 0, warmup >= 0 and max tokens >= 1")


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level's steady-state window."""

    concurrency: int
    window: WindowEnergy
    window_ns: int
    """Between the two /metrics reads (the token window)."""
    counters_start: EngineCounters
    counters_end: EngineCounters
    reading_start: EnergyReading
    reading_end: EnergyReading
    running_samples: tuple[int, ...]
    waiting_samples: tuple[int, ...]
    requests_completed: int
    requests_failed: int
    first_error: str | None = None

    @property
    def generation_tokens(self) -> int:
        """Output tokens vLLM generated in the window."""
        return self.counters_end.generation_tokens - self.counters_start.generation_tokens

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens vLLM processed in the window."""
        return self.counters_end.prompt_tokens - self.counters_start.prompt_tokens

    @property
    def tokens_per_s(self) -> Decimal:
        """Output tokens per second over the token window (3 decimals)."""
        value = Decimal(self.generation_tokens) * NS_PER_S / Decimal(self.window_ns)
        return value.quantize(Decimal("0.001"), ROUND_HALF_UP)

    @property
    def method(self) -> Method:
        """How the energy was obtained; an invalid window counts as unmeasured."""
        return self.window.method if self.window.valid else "unmeasured"

    @property
    def energy_mj(self) -> int | None:
        """Window energy in mJ, `None` when not measured or invalid."""
        return self.window.total_mj if self.window.valid else None

    @property
    def joules_per_token(self) -> Decimal | None:
        """Window J / output tokens (6 decimals, i.e. to the microjoule), or `None`."""
        if self.energy_mj is None or self.generation_tokens <= 0:
            return None
        value = Decimal(self.energy_mj) / 1000 / self.generation_tokens
        return value.quantize(Decimal("0.000001"), ROUND_HALF_UP)

    @property
    def unmeasured_reason(self) -> str | None:
        """Why J/token is `None` (else `None`)."""
        if self.window.invalid_reason:
            return f"invalid window: {self.window.invalid_reason}"
        if self.energy_mj is None:
            return self.window.basis
        if self.generation_tokens <= 0:
            return "no output tokens generated in the window"
        return None

    @property
    def avg_running(self) -> Decimal:
        """Mean of vLLM's running-requests gauge over the window's samples (3 decimals)."""
        return _mean(self.running_samples)

    @property
    def avg_waiting(self) -> Decimal:
        """Mean of vLLM's waiting-requests gauge over the window's samples (3 decimals)."""
        return _mean(self.waiting_samples)


def _mean(samples: Sequence[int]) -> Decimal:
    if not samples:
        return Decimal(0)
    return (Decimal(sum(samples)) / len(samples)).quantize(Decimal("0.001"), ROUND_HALF_UP)


@dataclass
class _Load:
    completed: int = 0
    failed: int = 0
    first_error: str | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _request_loop(
    http: httpx.AsyncClient, model: str, plan: CalibrationPlan, load: _Load
) -> None:
    body = {
        "model": model,
        "prompt": plan.prompt,
        "max_tokens": plan.max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
    }
    while not load.stop.is_set():
        try:
            async with http.stream(
                "POST", "/v1/completions", json=body, timeout=plan.request_timeout_s
            ) as response:
                async for _ in response.aiter_raw():
                    pass
                if response.status_code != 200:
                    raise CalibrationError(f"/v1/completions answered {response.status_code}")
            load.completed += 1
        except (httpx.HTTPError, CalibrationError) as exc:
            load.failed += 1
            if load.first_error is None:
                load.first_error = str(exc) or type(exc).__name__
            await asyncio.sleep(0.1)


async def _counters(http: httpx.AsyncClient, model: str) -> tuple[EngineCounters, int]:
    """Counters and the monotonic ns at the middle of the fetch."""
    before = time.monotonic_ns()
    try:
        counters = await afetch_engine_counters(http, model)
    except EngineError as exc:
        raise CalibrationError(f"cannot read vLLM's token counters: {exc}") from exc
    return counters, (before + time.monotonic_ns()) // 2


async def _warmup(
    seconds: float, concurrency: int, total: float, progress: Progress | None
) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.25, left))
        if progress is not None:
            progress(concurrency, seconds - max(0.0, deadline - time.monotonic()), total, "warmup")


async def measure_level(
    http: httpx.AsyncClient,
    meter: EnergyMeter,
    model: str,
    plan: CalibrationPlan,
    concurrency: int,
    progress: Progress | None = None,
) -> LevelResult:
    """Keep `concurrency` requests in flight; measure the window after the warm-up."""
    load = _Load()
    total = plan.warmup_s + plan.duration_s
    workers = [
        asyncio.create_task(_request_loop(http, model, plan, load)) for _ in range(concurrency)
    ]
    try:
        await _warmup(plan.warmup_s, concurrency, total, progress)
        reading_start = meter.read()
        counters_start, t_start = await _counters(http, model)
        running = [counters_start.requests_running]
        waiting = [counters_start.requests_waiting]
        deadline = time.monotonic() + plan.duration_s
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(plan.sample_interval_s, left))
            if deadline - time.monotonic() > 0:
                sample, _ = await _counters(http, model)
                running.append(sample.requests_running)
                waiting.append(sample.requests_waiting)
            if progress is not None:
                elapsed = total - max(0.0, deadline - time.monotonic())
                progress(concurrency, elapsed, total, "window")
        counters_end, t_end = await _counters(http, model)
        reading_end = meter.read()
        running.append(counters_end.requests_running)
        waiting.append(counters_end.requests_waiting)
    finally:
        load.stop.set()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    if load.completed == 0 and load.failed > 0:
        raise CalibrationError(
            f"every request failed at concurrency {concurrency}: {load.first_error}"
        )
    await _drain(http, model, plan, concurrency, progress)
    return LevelResult(
        concurrency=concurrency,
        window=window_energy(reading_start, reading_end),
        window_ns=max(1, t_end - t_start),
        counters_start=counters_start,
        counters_end=counters_end,
        reading_start=reading_start,
        reading_end=reading_end,
        running_samples=tuple(running),
        waiting_samples=tuple(waiting),
        requests_completed=load.completed,
        requests_failed=load.failed,
        first_error=load.first_error,
    )


async def _drain(
    http: httpx.AsyncClient,
    model: str,
    plan: CalibrationPlan,
    concurrency: int,
    progress: Progress | None,
) -> None:
    """Wait until vLLM has let go of the cancelled requests, so levels do not overlap."""
    deadline = time.monotonic() + plan.drain_timeout_s
    while time.monotonic() < deadline:
        counters, _ = await _counters(http, model)
        if counters.requests_running == 0 and counters.requests_waiting == 0:
            return
        if progress is not None:
            progress(concurrency, 0.0, 0.0, "drain")
        await asyncio.sleep(0.2)


async def served_model_name(http: httpx.AsyncClient, configured: str | None) -> str:
    """The configured served model, else the first one vLLM lists at /v1/models."""
    if configured is not None:
        return configured
    try:
        response = await http.get("/v1/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise CalibrationError(
            f"vllm.served_model is not set and /v1/models gave no model: {exc}"
        ) from exc


async def run_calibration(
    http: httpx.AsyncClient,
    meter: EnergyMeter,
    model: str,
    plan: CalibrationPlan,
    progress: Progress | None = None,
) -> list[LevelResult]:
    """Every level of `plan`, one after another. `http`'s base URL points at vLLM."""
    return [
        await measure_level(http, meter, model, plan, level, progress) for level in plan.concurrency
    ]


# ---- the signed message ----------------------------------------------------------------


def _gpu_counters(reading: EnergyReading) -> list[JsonValue]:
    return [{"uuid": gpu.uuid, "energy_mj": gpu.energy_mj} for gpu in reading.gpus]


def _token_counters(counters: EngineCounters) -> dict[str, JsonValue]:
    return {"prompt": counters.prompt_tokens, "generation": counters.generation_tokens}


def _milli(value: Decimal) -> int:
    return int((value * 1000).to_integral_value(ROUND_HALF_UP))


def level_json(level: LevelResult) -> dict[str, JsonValue]:
    """One level as it travels in the message (integers; decimals as strings)."""
    jpt = level.joules_per_token
    return {
        "concurrency": level.concurrency,
        "window_start_ms": level.window.start_unix_ms,
        "window_end_ms": level.window.end_unix_ms,
        "window_ns": level.window_ns,
        "generation_tokens": level.generation_tokens,
        "prompt_tokens": level.prompt_tokens,
        "tokens_per_s": str(level.tokens_per_s),
        "energy": {
            "method": level.method,
            "millijoules": level.energy_mj,
            "duration_ns": level.window.duration_ns,
            "basis": level.unmeasured_reason or level.window.basis,
        },
        "joules_per_token": None if jpt is None else str(jpt),
        "avg_power_mw": level.window.avg_power_mw if level.window.valid else None,
        "avg_running_milli": _milli(level.avg_running),
        "avg_waiting_milli": _milli(level.avg_waiting),
        "samples": len(level.running_samples),
        "requests_completed": level.requests_completed,
        "requests_failed": level.requests_failed,
        "counters": {
            "gpu_start": _gpu_counters(level.reading_start),
            "gpu_end": _gpu_counters(level.reading_end),
            "tokens_start": _token_counters(level.counters_start),
            "tokens_end": _token_counters(level.counters_end),
        },
    }


def calibration_message(
    identity: ProviderIdentity,
    domain: Domain,
    model: str,
    model_digest: str | None,
    meter_info: MeterInfo,
    plan: CalibrationPlan,
    levels: Sequence[LevelResult],
    now_ms: int,
) -> dict[str, JsonValue]:
    """The `calibration` v1 message (docs/agent-protocol.md, "Calibration")."""
    gpus: list[JsonValue] = [
        {"uuid": gpu.uuid, "name": gpu.name, "power_limit_mw": gpu.power_limit_mw}
        for gpu in meter_info.gpus
    ]
    return {
        "type": TYPE_TAG,
        "version": VERSION,
        "provider": identity.address,
        "public_key": identity.public_key_hex,
        "model": model,
        "model_digest": model_digest,
        "meter": {
            "kind": meter_info.kind,
            "method": meter_info.method,
            "reason": meter_info.reason,
            "driver_version": meter_info.driver_version,
            "gpus": gpus,
        },
        "method": "steady_state",
        "max_tokens": plan.max_tokens,
        "warmup_ms": round(plan.warmup_s * 1000),
        "duration_ms": round(plan.duration_s * 1000),
        "levels": [level_json(level) for level in levels],
        "issued_at": now_ms,
        "domain": {"chain_id": domain.chain_id, "settlement_contract": domain.settlement_contract},
    }


def sign_calibration(identity: ProviderIdentity, message: dict[str, JsonValue]) -> dict[str, Any]:
    """The envelope `{"message", "signer", "signature"}` over `signing_input("calibration", m)`."""
    signature = identity.signing_key.sign(signing_input(TYPE_TAG, message)).signature
    return {"message": message, "signer": identity.public_key_hex, "signature": to_hex(signature)}


def verify_calibration(envelope: dict[str, Any]) -> dict[str, Any]:
    """The message if the envelope's signature is good and the signer matches; else raise."""
    try:
        message = envelope["message"]
        signer = envelope["signer"]
        if message.get("type") != TYPE_TAG or message.get("version") != VERSION:
            raise CalibrationError("not a calibration v1 message")
        if message.get("public_key") != signer:
            raise CalibrationError("the message's public_key differs from the signer")
        verify_key_from_hex(signer).verify(
            signing_input(TYPE_TAG, message), from_hex(envelope["signature"], 64)
        )
    except (KeyError, TypeError, AttributeError, MalformedMessageError) as exc:
        raise CalibrationError(f"malformed calibration envelope: {exc}") from exc
    except BadSignatureError as exc:
        raise CalibrationError("the calibration's signature does not verify") from exc
    result: dict[str, Any] = message
    return result


def calibration_path(data_dir: Path) -> Path:
    """Where the latest calibration lives."""
    return data_dir / FILE_NAME


def save_calibration(data_dir: Path, envelope: dict[str, Any]) -> Path:
    """Write the signed envelope to `data_dir/calibration.json` (atomically)."""
    path = calibration_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(path, (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode())
    return path


# ---- reading a calibration back (for pricing) ------------------------------------------


@dataclass(frozen=True)
class CalibratedLevel:
    """What pricing needs from one level: its energy, its tokens and how it was measured."""

    concurrency: int
    method: Method
    energy_mj: int | None
    generation_tokens: int
    reason: str | None

    @property
    def joules_per_token(self) -> Decimal | None:
        """Exact J/token (energy mJ / 1000 / tokens), `None` when not measured."""
        if self.energy_mj is None or self.method == "unmeasured" or self.generation_tokens <= 0:
            return None
        return Decimal(self.energy_mj) / 1000 / Decimal(self.generation_tokens)


@dataclass(frozen=True)
class Calibration:
    """A verified calibration: model, when, and each level."""

    model: str
    issued_at: int
    levels: tuple[CalibratedLevel, ...]
    path: Path | None = None

    def closest(self, concurrency: int) -> CalibratedLevel:
        """The level at `concurrency`, else the closest (a tie goes to the lower level,
        whose J/token is higher, so the floor errs on the provider's side)."""
        if not self.levels:
            raise CalibrationError("the calibration has no levels")
        return min(self.levels, key=lambda lv: (abs(lv.concurrency - concurrency), lv.concurrency))


def parse_calibration(envelope: dict[str, Any], path: Path | None = None) -> Calibration:
    """Verify the envelope and pick out what pricing needs."""
    message = verify_calibration(envelope)
    try:
        levels = tuple(
            CalibratedLevel(
                concurrency=int(level["concurrency"]),
                method=level["energy"]["method"],
                energy_mj=level["energy"]["millijoules"],
                generation_tokens=int(level["generation_tokens"]),
                reason=level["energy"].get("basis"),
            )
            for level in message["levels"]
        )
        return Calibration(str(message["model"]), int(message["issued_at"]), levels, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"malformed calibration message: {exc}") from exc


def load_calibration(data_dir: Path) -> Calibration | None:
    """The latest saved calibration, `None` if there is none; raise if it is corrupt."""
    path = calibration_path(data_dir)
    try:
        envelope = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read {path}: {exc}") from exc
    if not isinstance(envelope, dict):
        raise CalibrationError(f"{path} does not hold a calibration envelope")
    return parse_calibration(envelope, path)
