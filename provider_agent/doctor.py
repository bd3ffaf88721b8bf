"""`provider-agent doctor`: one small check per thing the agent needs, each with a fix."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal

import httpx

from protocol.chain.errors import ChainError
from protocol.chain.settlement import SettlementClient
from protocol.errors import KeystoreError
from protocol.keys import ProviderIdentity, load_keystore
from provider_agent.config import AgentSettings, VllmSettings, unknown_settings
from provider_agent.energy import (
    AmbiguousGpuOrderError,
    EnergyMeter,
    gpu_index_order,
    gpus_to_meter,
)
from provider_agent.energy.nvml import index_entries
from provider_agent.engine.errors import EngineError
from provider_agent.engine.metrics import fetch_engine_counters
from provider_agent.jobs.outbox import MIB, free_bytes
from provider_agent.onchain import (
    ZERO_KEY,
    ChainSetupError,
    network_tokens,
    open_settlement,
)

Status = Literal["pass", "warn", "fail", "skip"]
MAX_CLOCK_SKEW_S = 2.0


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, and how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


def check_keystore(path: Path, passphrase: str | None) -> tuple[Check, ProviderIdentity | None]:
    """The keystore exists and the passphrase opens it."""
    name = "keystore"
    if not path.exists():
        return Check(name, "fail", f"no keystore at {path}", "run `provider-agent init`"), None
    if passphrase is None:
        return Check(name, "fail", "no passphrase given", "set AGENT_PASSPHRASE"), None
    try:
        identity = load_keystore(path, passphrase)
    except KeystoreError as exc:
        return Check(name, "fail", str(exc), "check AGENT_PASSPHRASE (or the prompt)"), None
    detail = f"{path}: key {identity.public_key_hex}, address {identity.address}"
    return Check(name, "pass", detail), identity


def _vllm_down(name: str, vllm: VllmSettings, error: str) -> Check:
    if vllm.command:
        started = " ".join(vllm.command)
        return Check(name, "warn", f"{error}; the agent starts vLLM itself", f"runs: {started}")
    return Check(name, "fail", error, f"start vLLM so that it answers at {vllm.url}")


def check_vllm_health(http: httpx.Client, vllm: VllmSettings) -> Check:
    """vLLM answers `GET /health` with 200."""
    try:
        response = http.get(f"{vllm.url}/health")
    except httpx.HTTPError as exc:
        return _vllm_down("vLLM health", vllm, f"{vllm.url} unreachable: {exc}")
    if response.status_code != 200:
        return _vllm_down("vLLM health", vllm, f"/health answered {response.status_code}")
    return Check("vLLM health", "pass", f"{vllm.url}/health answered 200")


def check_vllm_model(http: httpx.Client, vllm: VllmSettings) -> Check:
    """vLLM serves the configured model (`GET /v1/models`)."""
    name = "vLLM model"
    try:
        response = http.get(f"{vllm.url}/v1/models")
        response.raise_for_status()
        served = [str(entry["id"]) for entry in response.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return _vllm_down(name, vllm, f"/v1/models failed: {exc}")
    if vllm.served_model is None:
        return Check(
            name, "fail", f"no model configured; vLLM serves {served}", "set vllm.served_model"
        )
    if vllm.served_model not in served:
        fix = f"start vLLM with --served-model-name {vllm.served_model}, or fix vllm.served_model"
        return Check(name, "fail", f"{vllm.served_model!r} not among {served}", fix)
    return Check(name, "pass", f"serves {vllm.served_model!r}")


def check_vllm_metrics(http: httpx.Client, vllm: VllmSettings) -> Check:
    """vLLM's `/metrics` has the token counters attestations need."""
    try:
        counters = fetch_engine_counters(http, vllm.served_model, path=f"{vllm.url}/metrics")
    except EngineError as exc:
        return _vllm_down("vLLM metrics", vllm, str(exc))
    detail = (
        f"{counters.prompt_tokens} prompt / {counters.generation_tokens} generated tokens,"
        f" {counters.requests_running} running"
    )
    return Check("vLLM metrics", "pass", detail)


GPU_ORDER_FIX = (
    "set CUDA_DEVICE_ORDER=PCI_BUS_ID for vLLM and the agent, or name the GPUs by UUID"
    " (GPU-...) in energy.gpus"
)
"""What makes CUDA's indices name the GPUs the meter reads, whatever the GPUs' models."""


def check_energy_meter(meter: EnergyMeter) -> Check:
    """NVML measures (pass); estimated or unmeasured is allowed but said on every receipt.
    The fix names the setting to change where NVML works but the GPUs vLLM runs on cannot be
    told apart (`ambiguous_gpu_order`), and the driver to install otherwise."""
    info = meter.describe()
    if info.method == "measured":
        names = ", ".join(gpu.name for gpu in info.gpus)
        return Check("energy meter", "pass", f"NVML, driver {info.driver_version}: {names}")
    if info.reason_code == AmbiguousGpuOrderError.code:
        fix = GPU_ORDER_FIX
    else:
        fix = "install the NVIDIA driver and nvidia-ml-py (GPUs from Volta on have energy counters)"
    if info.method == "estimated":
        detail = f"estimated from declared power: receipts will say so ({info.reason})"
        return Check("energy meter", "warn", detail, fix)
    fix += "; or declare offer.declared_power_w for a flagged estimate"
    return Check("energy meter", "warn", f"unmeasured: receipts will say so ({info.reason})", fix)


def check_gpu_order(
    configured: list[str] | None, environ: Mapping[str, str], meter: EnergyMeter
) -> Check:
    """The GPUs metered are those vLLM runs on: all of them, named by UUID, by NVML index, by
    CUDA index in PCI bus order, or by CUDA index fastest first among GPUs of one model.

    `environ` is vLLM's environment (the agent's own when it does not start vLLM)."""
    name = "GPU order"
    gpus = gpus_to_meter(configured, environ)
    indices = index_entries(gpus)
    if gpus is None:
        return Check(name, "pass", "every GPU is metered: their order does not matter")
    if not indices:
        return Check(name, "pass", f"GPUs named by UUID: {', '.join(gpus)}")
    if configured is not None:
        return Check(name, "pass", "energy.gpus counts GPUs as NVML and nvidia-smi do")
    if gpu_index_order(configured, environ) == "pci_bus":
        detail = "CUDA_DEVICE_ORDER=PCI_BUS_ID: CUDA's indices are matched to GPUs by PCI bus id"
        return Check(name, "pass", detail)
    counted = f"CUDA index {', '.join(indices)} counts GPUs fastest first"
    info = meter.describe()
    if info.method == "measured":
        models = ", ".join(sorted({gpu.name for gpu in info.gpus}))
        return Check(name, "pass", f"{counted}, but all GPUs are {models}: PCI bus order")
    detail = f"{counted}, and NVML did not show the GPUs to be one model (see energy meter)"
    return Check(name, "warn", detail, GPU_ORDER_FIX)


def check_data_dir_space(
    data_dir: Path, min_free_mib: int, free: Callable[[Path], int] = free_bytes
) -> Check:
    """The data dir's disk has `data_dir_min_free_mib` free: with less, `run` refuses new
    jobs. A data dir not made yet is measured on the nearest folder above it that exists."""
    name = "data dir space"
    existing = next(folder for folder in (data_dir, *data_dir.parents) if folder.exists())
    try:
        free_space = free(existing)
    except OSError as exc:
        return Check(name, "warn", f"cannot read the free space of {existing}: {exc}")
    detail = f"{free_space // MIB} MiB free on the disk of {data_dir}, {min_free_mib} MiB kept free"
    if free_space < min_free_mib * MIB:
        fix = "free space on that disk, or move data_dir to a larger one"
        return Check(name, "fail", f"{detail}: run refuses new jobs", fix)
    return Check(name, "pass", detail)


def _size(paths: list[Path]) -> int:
    """The bytes of the files among `paths` and of the files under the folders among them."""
    files = [file for path in paths for file in (path.rglob("*") if path.is_dir() else [path])]
    return sum(file.stat().st_size for file in files if file.is_file())


def check_records(data_dir: Path, retention_days: int | None) -> Check:
    """How much the receipts and the attestation archive take, and how long they are kept
    (`run.retention_days`; unset, they grow until the operator removes files)."""
    receipts = _size([data_dir / "receipts", data_dir / "receipts.jsonl"])
    archive = _size([data_dir / "attestations-archive"])
    detail = f"receipts {receipts / MIB:.1f} MiB, attestation archive {archive / MIB:.1f} MiB"
    if retention_days is None:
        return Check("data dir records", "pass", f"{detail}, kept until removed by hand")
    return Check("data dir records", "pass", f"{detail}, answered ones kept {retention_days} days")


def check_setting_names(environ: Mapping[str, str]) -> Check:
    """Every `AGENT_*` variable names a setting: a misspelt one is ignored, and its default
    is in force (`unknown_settings`)."""
    unknown = unknown_settings(environ)
    if not unknown:
        return Check("setting names", "pass", "every AGENT_* variable names a setting")
    fix = "rename or unset them (the settings and their names: provider_agent/config.py)"
    return Check("setting names", "warn", "; ".join(unknown), fix)


def check_chain(settings: AgentSettings) -> tuple[Check, SettlementClient | None]:
    """The RPC answers, its chain id matches the deployment file, and the contract is there."""
    name = "chain"
    if settings.chain_rpc_url is None or settings.deployment_file is None:
        fix = "set AGENT_CHAIN_RPC_URL and AGENT_DEPLOYMENT_FILE (the market publishes both)"
        return Check(name, "fail", "chain not configured", fix), None
    try:
        client = open_settlement(settings.chain_rpc_url, settings.deployment_file)
    except ChainSetupError as exc:
        fix = "check chain_rpc_url and that deployment_file belongs to that chain"
        return Check(name, "fail", str(exc), fix), None
    detail = f"chain {client.deployment.chain_id}, settlement {client.deployment.settlement}"
    return Check(name, "pass", detail), client


def check_provider_key(client: SettlementClient, identity: ProviderIdentity) -> Check:
    """The keystore's Ed25519 key is bound on-chain to its EVM address."""
    name = "provider key on-chain"
    try:
        bound = client.provider_key(identity.address)
    except ChainError as exc:
        return Check(name, "fail", str(exc), "check the chain RPC")
    if bound == ZERO_KEY:
        return Check(
            name, "fail", f"{identity.address} has bound no key", "run `provider-agent register`"
        )
    if "0x" + bound.hex() != identity.public_key_hex:
        detail = f"{identity.address} is bound to another key 0x{bound.hex()}"
        fix = (
            "if `provider-agent rotate-key` was interrupted, run it again to finish it; else use"
            " the keystore holding that key, or a new identity"
        )
        return Check(name, "fail", detail, fix)
    return Check(name, "pass", f"{identity.address} -> {identity.public_key_hex}")


def check_stake(client: SettlementClient, identity: ProviderIdentity) -> Check:
    """The address has at least the contract's minimum stake."""
    try:
        staked = client.stake_of(identity.address)
        minimum = client.min_provider_stake()
    except ChainError as exc:
        return Check("stake", "fail", str(exc), "check the chain RPC")
    detail = f"{network_tokens(staked)} staked, minimum {network_tokens(minimum)}"
    if staked < minimum:
        return Check("stake", "fail", detail, "run `provider-agent register` (it stakes the rest)")
    return Check("stake", "pass", detail)


def check_market(
    http: httpx.Client, market_url: str | None, now: Callable[[], float] = time.time
) -> list[Check]:
    """The market answers `GET /health`, and our clock agrees with its `Date` header."""
    if market_url is None:
        return [Check("market", "warn", "market_url not set", "set AGENT_MARKET_URL")]
    sent = now()
    try:
        response = http.get(f"{market_url}/health")
    except httpx.HTTPError as exc:
        fix = "check market_url and the network"
        return [Check("market", "fail", f"{market_url} unreachable: {exc}", fix)]
    received = now()
    if response.status_code != 200:
        fix = "check market_url; the market may be down"
        return [Check("market", "fail", f"/health answered {response.status_code}", fix)]
    return [
        Check("market", "pass", f"{market_url}/health answered 200"),
        _skew(response, sent, received),
    ]


def _skew(response: httpx.Response, sent: float, received: float) -> Check:
    header = response.headers.get("date")
    try:
        theirs = parsedate_to_datetime(header).timestamp() if header else None
    except (TypeError, ValueError):
        theirs = None
    if theirs is None:
        return Check("clock skew", "warn", "the market sent no usable Date header")
    # The header truncates to whole seconds (true time in [theirs, theirs + 1)): compare the
    # middle of that second with our clock at the middle of the exchange.
    skew = (sent + received) / 2 - (theirs + 0.5)
    detail = f"{skew:+.1f} s against the market"
    if abs(skew) > MAX_CLOCK_SKEW_S:
        return Check("clock skew", "warn", detail, "sync the clock (chrony or systemd-timesyncd)")
    return Check("clock skew", "pass", detail)


def run_doctor(
    settings: AgentSettings,
    passphrase: str | None,
    http: httpx.Client,
    meter: EnergyMeter,
    environ: Mapping[str, str],
) -> list[Check]:
    """Every check, in order; chain checks that need an earlier success are skipped without it.

    `environ` is vLLM's environment (the agent's own when it does not start vLLM)."""
    keystore, identity = check_keystore(settings.keystore_path, passphrase)
    checks = [
        keystore,
        check_vllm_health(http, settings.vllm),
        check_vllm_model(http, settings.vllm),
        check_vllm_metrics(http, settings.vllm),
        check_energy_meter(meter),
        check_gpu_order(settings.energy.gpus, environ, meter),
        check_data_dir_space(settings.data_dir, settings.data_dir_min_free_mib),
        check_records(settings.data_dir, settings.run.retention_days),
        check_setting_names(os.environ),
    ]
    chain, client = check_chain(settings)
    checks.append(chain)
    for name, check in (("provider key on-chain", check_provider_key), ("stake", check_stake)):
        if client is None or identity is None:
            why = "needs the chain" if client is None else "needs the keystore"
            checks.append(Check(name, "skip", f"not checked: {why}"))
        else:
            checks.append(check(client, identity))
    checks.extend(check_market(http, settings.market_url))
    return checks


def failed(checks: list[Check]) -> bool:
    """Whether any check failed (the command then exits 1)."""
    return any(check.status == "fail" for check in checks)
