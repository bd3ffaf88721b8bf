"""HTTP routes of the providers package: registration, heartbeats, attestations, public view."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from market.providers import service
from market.providers.receipts import ReceiptStatusAnswer, ReceiptStatusQuery, receipt_states
from market.providers.schemas import (
    AttestationAccepted,
    CalibrationRead,
    HeartbeatAccepted,
    ProviderRead,
    ProviderStatement,
    RegistrationAccepted,
    SignedProviderMessage,
)
from market.runtime import Runtime, get_runtime, transaction
from protocol.messages import Attestation, Signed

router = APIRouter(tags=["providers"])


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _session(runtime: RuntimeDep) -> Iterator[Session]:
    yield from transaction(runtime)


SessionDep = Annotated[Session, Depends(_session)]


@router.post("/providers/register", response_model=RegistrationAccepted)
def register(
    envelope: SignedProviderMessage,
    runtime: RuntimeDep,
    session: SessionDep,
) -> RegistrationAccepted:
    """Accepts a signed `provider_registration` whose key is bound and staked on-chain."""
    return service.register(
        session,
        envelope,
        client=runtime.chain.client,
        domain=runtime.chain.domain,
        min_stake=runtime.settings.min_provider_stake,
        heartbeat_timeout_s=runtime.settings.heartbeat_timeout_s,
    )


@router.post("/providers/heartbeat", response_model=HeartbeatAccepted)
def heartbeat(
    envelope: SignedProviderMessage,
    runtime: RuntimeDep,
    session: SessionDep,
) -> HeartbeatAccepted:
    """Records a signed `provider_heartbeat`; without one in time a provider leaves routing."""
    return service.heartbeat(
        session,
        envelope,
        client=runtime.chain.client,
        domain=runtime.chain.domain,
        heartbeat_timeout_s=runtime.settings.heartbeat_timeout_s,
    )


@router.post("/providers/attestations", response_model=AttestationAccepted)
def attestation(
    envelope: Signed[Attestation],
    runtime: RuntimeDep,
    session: SessionDep,
) -> AttestationAccepted:
    """Stores a signed attestation that extends the provider's hash chain."""
    return service.submit_attestation(session, envelope, domain=runtime.chain.domain)


@router.post("/providers/calibration", response_model=CalibrationRead)
def calibration(
    envelope: SignedProviderMessage,
    runtime: RuntimeDep,
    session: SessionDep,
) -> CalibrationRead:
    """Stores a registered provider's signed calibration (the newest replaces the older)."""
    return service.submit_calibration(session, envelope, domain=runtime.chain.domain)


@router.post("/providers/receipts/status", response_model=ReceiptStatusAnswer)
def receipt_status(
    query: ReceiptStatusQuery, runtime: RuntimeDep, session: SessionDep
) -> ReceiptStatusAnswer:
    """What the market holds for each of an agent's signed receipts (reads only)."""
    return receipt_states(session, query.receipts, runtime.chain.domain)


@router.get("/providers", response_model=list[ProviderRead])
def list_providers(runtime: RuntimeDep, session: SessionDep) -> list[ProviderRead]:
    """Every provider: offers, last heartbeat, whether it is online, latest attestation."""
    return service.list_providers(session, runtime.settings.heartbeat_timeout_s)


@router.get("/providers/{address}", response_model=ProviderRead)
def get_provider(address: str, runtime: RuntimeDep, session: SessionDep) -> ProviderRead:
    """One provider's public view."""
    return service.get_provider(session, address, runtime.settings.heartbeat_timeout_s)


@router.get("/providers/{address}/statement", response_model=ProviderStatement)
def provider_statement(address: str, session: SessionDep) -> ProviderStatement:
    """Revenue (charges - fee) against energy cost per model and epoch: the energy margin."""
    return service.provider_statement(session, address)
