"""Plain factory functions: providers on the chain, and the messages their agents sign."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from market.runtime import Runtime
from protocol.canonical import JsonValue, signing_input, to_hex
from protocol.chain.connection import fund_from_dev_account
from protocol.chain.transactor import Transactor
from protocol.keys import ProviderIdentity
from protocol.messages import (
    ZERO_HASH,
    Attestation,
    Domain,
    EnergyMethod,
    GpuReading,
    Signed,
    TokenCounters,
    message_digest,
    sign,
)
from provider_agent.config import AgentSettings, OfferSettings, VllmSettings
from provider_agent.registration import signed_registration

MODEL = "tiny-llama"
MODEL_DIGEST = "0x" + "ab" * 32
JOB_URL = "http://agent.example:8001"
GAS = 10**18


def now_ms() -> int:
    """Wall clock in unix ms, as the agent signs."""
    return time.time_ns() // 1_000_000


@dataclass
class ChainProviders:
    """Creates provider identities and binds and stakes them on the runtime's chain."""

    runtime: Runtime
    tmp_path: Path

    @property
    def min_stake(self) -> int:
        """The contract's minimum stake."""
        return self.runtime.chain.client.min_provider_stake()

    def new(self, *, bind: bool = True, stake: int | None = None) -> ProviderIdentity:
        """A fresh provider; bound on-chain unless `bind` is false; staked `stake` (default min)."""
        identity = ProviderIdentity.generate()
        chain = self.runtime.chain
        w3 = chain.client.w3
        fund_from_dev_account(w3, identity.address, GAS)
        sender = Transactor(w3, identity.eth_account)
        if bind:
            chain.client.register_provider(sender, bytes(identity.signing_key.verify_key))
        amount = self.min_stake if stake is None else stake
        if bind and amount > 0:
            chain.client.transfer_network(chain.operator, identity.address, amount)
            chain.client.stake(sender, amount)
        return identity

    def agent_settings(self, **offer: Any) -> AgentSettings:
        """Agent settings with a complete offer (`offer` overrides its fields)."""
        fields: dict[str, Any] = {
            "price_in_per_mtok": 100_000,
            "price_out_per_mtok": 400_000,
            "max_concurrency": 4,
            "region": "DE",
            "gpu": "NVIDIA H100 80GB HBM3",
            "public_url": JOB_URL,
        }
        fields.update(offer)
        return AgentSettings(
            data_dir=self.tmp_path / "agent",
            vllm=VllmSettings(served_model=MODEL, model_digest=MODEL_DIGEST),
            offer=OfferSettings(**fields),
        )

    def registration(
        self,
        identity: ProviderIdentity,
        now: int | None = None,
        context_length: int | None = None,
        **offer: Any,
    ) -> dict[str, Any]:
        """The agent's own signed registration envelope (`context_length`: the engine's)."""
        return signed_registration(
            self.agent_settings(**offer),
            identity,
            self.runtime.chain.deployment,
            now_ms() if now is None else now,
            context_length=context_length,
        )


def resign(identity: ProviderIdentity, type_tag: str, message: dict[str, Any]) -> dict[str, Any]:
    """An envelope over `message` signed by `identity` (for messages built by hand)."""
    signature = identity.signing_key.sign(signing_input(type_tag, message)).signature
    return {"message": message, "signer": identity.public_key_hex, "signature": to_hex(signature)}


def heartbeat(identity: ProviderIdentity, domain: Domain, issued_at: int) -> dict[str, Any]:
    """A signed `provider_heartbeat`."""
    message: dict[str, JsonValue] = {
        "type": "provider_heartbeat",
        "version": 1,
        "provider": identity.address,
        "issued_at": issued_at,
        "domain": {"chain_id": domain.chain_id, "settlement_contract": domain.settlement_contract},
    }
    return resign(identity, "provider_heartbeat", dict(message))


def attestation(
    identity: ProviderIdentity,
    domain: Domain,
    seq: int,
    previous: Attestation | None,
    *,
    window_start: int,
    energy_mj: int = 60_000_000,
    generation_tokens: int = 120_000,
    method: EnergyMethod = "measured",
    running_milli: int = 12_500,
    avg_power_mw: int = 350_000,
) -> Signed[Attestation]:
    """A signed attestation over a 60 s window that follows `previous` (None: a chain's first)."""
    counter_start = 1_000_000_000 + seq * energy_mj
    tokens_start = seq * generation_tokens
    measured = method != "unmeasured"
    message = Attestation(
        provider=identity.address,
        seq=seq,
        prev_hash=ZERO_HASH if previous is None else message_digest(previous),
        window_start=window_start,
        window_end=window_start + 60_000,
        gpus=(
            GpuReading(
                uuid="GPU-5c2e1b2a-1f7d-4c39-9a0e-2b9f6d1c3e44",
                name="NVIDIA H100 80GB HBM3",
                energy_mj_start=counter_start if measured else None,
                energy_mj_end=counter_start + energy_mj if measured else None,
                power_limit_mw=700_000,
                avg_power_mw=avg_power_mw,
            ),
        ),
        driver_version="550.54.15",
        energy_method=method,
        energy_basis="declared power" if method == "estimated" else None,
        tokens=TokenCounters(
            prompt_tokens_start=tokens_start // 2,
            prompt_tokens_end=(tokens_start + generation_tokens) // 2,
            generation_tokens_start=tokens_start,
            generation_tokens_end=tokens_start + generation_tokens,
        ),
        avg_running_requests_milli=running_milli,
        avg_waiting_requests_milli=0,
        domain=domain,
    )
    return sign(message, identity.signing_key)
