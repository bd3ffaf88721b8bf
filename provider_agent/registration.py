"""The signed registration the agent posts to the market (`POST /providers/register`).

`protocol.messages` has no registration message yet, so this builds one on the same
rules (canonical JSON, `signing_input`, Ed25519 envelope); docs/agent-protocol.md,
section "Registration", specifies it.
"""

from __future__ import annotations

import time
from typing import Any

from protocol.canonical import JsonValue, signing_input, to_hex
from protocol.chain.deploy import Deployment
from protocol.keys import ProviderIdentity
from protocol.messages import Domain
from provider_agent.config import AgentSettings

TYPE_TAG = "provider_registration"
VALIDITY_MS = 5 * 60 * 1000


def registration_message(
    settings: AgentSettings,
    identity: ProviderIdentity,
    deployment: Deployment | Domain,
    now_ms: int,
    context_length: int | None = None,
) -> dict[str, JsonValue]:
    """The registration message (no floats: fractions travel as integer milli-units) for the
    deployment the key is bound on, or its domain. `context_length`: the engine's, as it
    reports it (`provider_agent.engine.models`); None when it does not or was not asked."""
    offer = settings.offer
    tariff: JsonValue = None
    if offer.tariff is not None:
        tariff = {"per_kwh": str(offer.tariff.per_kwh), "currency": offer.tariff.currency}
    declared_mw = None if offer.declared_power_w is None else round(offer.declared_power_w * 1000)
    return {
        "type": TYPE_TAG,
        "version": 1,
        "provider": identity.address,
        "public_key": identity.public_key_hex,
        "endpoint": offer.public_url,
        "model": settings.vllm.served_model,
        "model_digest": settings.vllm.model_digest,
        "price_in_per_mtok": _price(offer.price_in_per_mtok),
        "price_out_per_mtok": _price(offer.price_out_per_mtok),
        "max_concurrency": offer.max_concurrency,
        "region": offer.region,
        "tariff": tariff,
        "pue_profile": offer.pue_profile,
        "host_overhead_milli": round(offer.host_overhead * 1000),
        "gpu": offer.gpu,
        "declared_power_mw": declared_mw,
        "context_length": context_length,
        "issued_at": now_ms,
        "expires_at": now_ms + VALIDITY_MS,
        "domain": _domain(deployment),
    }


def _domain(deployment: Deployment | Domain) -> dict[str, JsonValue]:
    if isinstance(deployment, Domain):
        settlement = deployment.settlement_contract
    else:
        settlement = deployment.settlement
    return {"chain_id": deployment.chain_id, "settlement_contract": settlement}


def _price(value: int | str) -> JsonValue:
    # Base units may exceed 2^53 - 1, the canonical encoding's integer range: send decimals.
    return value if value == "auto" else str(value)


def signed_registration(
    settings: AgentSettings,
    identity: ProviderIdentity,
    deployment: Deployment | Domain,
    now_ms: int | None = None,
    context_length: int | None = None,
) -> dict[str, Any]:
    """The envelope `{"message", "signer", "signature"}` ready to post."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    message = registration_message(settings, identity, deployment, now_ms, context_length)
    signature = identity.signing_key.sign(signing_input(TYPE_TAG, message)).signature
    return {"message": message, "signer": identity.public_key_hex, "signature": to_hex(signature)}
