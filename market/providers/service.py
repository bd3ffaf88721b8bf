"""Providers: registration bound on-chain, offers, heartbeats, attestations, routing's view.

Every signed provider message is checked in the same order: signature (401), then the
message's fields (422), domain (403), time window (410 / 422), the chain (403), and last the
database: a registration or heartbeat not newer than the last accepted one is a replay (409).
Services flush and never commit; the request owns the transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import nacl.exceptions
from nacl.signing import VerifyKey
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from market.addresses import checksum_address
from market.config import get_settings
from market.db import utcnow
from market.energy.accounting import DEFAULT_RATES, SiteProfile, energy_chain
from market.energy.plausibility import (
    CheckResult,
    check_chain_link,
    check_claim,
    check_counters_monotonic,
    check_tokens_vs_receipts,
    check_window_length,
    claim_from_attestation,
)
from market.jobs.energy import summarize
from market.jobs.models import Receipt
from market.providers.errors import (
    BrokenAttestationChainError,
    ChainUnavailableError,
    InvalidOfferError,
    MalformedProviderMessageError,
    MessageExpiredError,
    MessageNotYetValidError,
    ProviderKeyNotBoundError,
    ProviderNotFoundError,
    ProviderSignatureError,
    ProviderStakeTooLowError,
    ProviderSuspendedError,
    ProviderWrongDomainError,
    ReplayedMessageError,
)
from market.providers.models import (
    Attestation,
    AttestationCheck,
    Calibration,
    Offer,
    Provider,
    ProviderStatus,
)
from market.providers.repository import ProviderRepository, RoutableOffer, SteadyWindows
from market.providers.schemas import (
    HEARTBEAT_TYPE,
    REGISTRATION_TYPE,
    AttestationAccepted,
    AttestationCheckRead,
    AttestationSummary,
    CalibrationLevelRead,
    CalibrationRead,
    EfficiencyRead,
    Heartbeat,
    HeartbeatAccepted,
    OfferRead,
    ProviderRead,
    ProviderStatement,
    Registration,
    RegistrationAccepted,
    SignedProviderMessage,
    StatementLine,
)
from market.providers.site import site_profile
from market.reviews import service as reviews
from market.routing.table import LiveOffer
from protocol.canonical import from_hex, signing_input
from protocol.chain.errors import ChainError, ChainUnavailable
from protocol.chain.settlement import SettlementClient
from protocol.errors import BadSignatureError, BrokenChainError, ProtocolError, WrongDomainError
from protocol.messages import Attestation as AttestationMessage
from protocol.messages import Domain, Signed, check_chain, message_digest, parse_signed, verify

MAX_CLOCK_SKEW_MS = 5_000
"""How far ahead of the market's clock a message's `issued_at` may be."""

MAX_REGISTRATION_VALIDITY_MS = 10 * 60 * 1000
"""The longest `expires_at - issued_at` a registration may ask for (the agent signs for 5 min)."""

HEARTBEAT_MAX_AGE_MS = 60_000
"""A heartbeat older than this on arrival is refused as expired."""

PUE_MILLI: dict[str, int] = {
    # shared/data/pue.csv
    "industry_average": 1560,  # Uptime Institute global survey 2024 (1.55-1.59 since 2020)
    "new_large_site": 1300,  # Uptime Institute (new large sites <= 1.3)
    "hyperscale_best": 1100,  # Google fleet Q2 2021
    "colocation": 1420,  # Equinix 2023
    "edge_or_home": 1000,  # no facility overhead beyond the rig (an assumption)
}
"""PUE of each profile a provider may declare, in milli-units."""

PHYSICS_PENALTY = 10
"""Reputation lost for an attestation with a failed physics check (an impossible claim)."""
DATA_PENALTY = 3
"""Reputation lost for an attestation with a failed data check (outside what was measured)
and no failed physics check. Consistency and hygiene failures are recorded, not penalised."""
TOKEN_DECIMALS = 6
"""Decimals of the payment token, for energy cost in base units (tUSD: 6)."""


def now_ms() -> int:
    """The market's clock in unix milliseconds."""
    return time.time_ns() // 1_000_000


# -- checking signed provider messages -----------------------------------------------------


def _verify_raw(envelope: SignedProviderMessage, type_tag: str, expected_signer: str) -> None:
    """Checks the Ed25519 signature over the message exactly as received."""
    if envelope.signer != expected_signer:
        raise ProviderSignatureError(f"signed by {envelope.signer}, expected {expected_signer}")
    if envelope.message.get("type") != type_tag:
        raise MalformedProviderMessageError(f"message type must be {type_tag!r}")
    try:
        data = signing_input(type_tag, envelope.message)
    except ProtocolError as exc:
        raise MalformedProviderMessageError(f"{type_tag} is not canonical JSON: {exc}") from exc
    try:
        VerifyKey(from_hex(envelope.signer, 32)).verify(data, from_hex(envelope.signature, 64))
    except (nacl.exceptions.CryptoError, ProtocolError) as exc:
        raise ProviderSignatureError(f"{type_tag} signature does not verify") from exc


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '$'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    )


def _check_domain(kind: str, got: Domain, want: Domain) -> None:
    if got != want:
        raise ProviderWrongDomainError(f"{kind} is for {got}, the market is on {want}")


def _check_not_ahead(kind: str, issued_at: int, now: int) -> None:
    if issued_at > now + MAX_CLOCK_SKEW_MS:
        raise MessageNotYetValidError(f"{kind} issued at {issued_at}, market time is {now}")


def _check_on_chain(
    client: SettlementClient, address: str, public_key: str, min_stake: int
) -> None:
    """The key is bound to `address` on-chain, and the address is an active, staked provider."""
    try:
        bound = client.provider_key(address)
        if bound != from_hex(public_key, 32):
            if bound == bytes(32):
                raise ProviderKeyNotBoundError(f"{address} has bound no Ed25519 key on-chain")
            raise ProviderKeyNotBoundError(
                f"{address} bound another key on-chain: 0x{bound.hex()}, not {public_key}"
            )
        stake = client.stake_of(address)
        if not client.is_active_provider(address) or stake < min_stake:
            raise ProviderStakeTooLowError(
                f"{address} stakes {stake} network-token base units; the market requires "
                f"{min_stake} and an active provider on-chain"
            )
    except ChainUnavailable as exc:
        raise ChainUnavailableError(f"the chain did not answer: {exc}") from exc
    except ChainError as exc:
        raise ChainUnavailableError(f"the chain call failed: {exc}") from exc


# -- registration ----------------------------------------------------------------------------


def _tariff_micro(per_kwh: str) -> int:
    return int(Decimal(per_kwh) * 1_000_000)


def _price(name: str, value: str) -> int:
    if value == "auto":
        raise InvalidOfferError(
            f"{name} is 'auto', which the market does not price yet: send an integer in "
            "payment-token base units per million tokens"
        )
    return int(value)


def parse_registration(envelope: SignedProviderMessage) -> Registration:
    """The registration in the envelope, if its signature and fields are valid."""
    _verify_raw(envelope, REGISTRATION_TYPE, envelope.signer)
    try:
        registration = Registration.model_validate(envelope.message)
    except ValidationError as exc:
        raise InvalidOfferError(f"invalid registration: {_problems(exc)}") from exc
    if registration.public_key != envelope.signer:
        raise ProviderSignatureError("public_key differs from the envelope's signer")
    return registration


def register(
    session: Session,
    envelope: SignedProviderMessage,
    *,
    client: SettlementClient,
    domain: Domain,
    min_stake: int,
    heartbeat_timeout_s: int,
    now: int | None = None,
) -> RegistrationAccepted:
    """Accepts a signed registration whose key is bound and staked on-chain; stores its offer.

    The newest registration wins: it replaces the provider's key and offer; one not newer
    than the last accepted is a replay. A registration also counts as a heartbeat.
    """
    now = now_ms() if now is None else now
    registration = parse_registration(envelope)
    _check_domain("registration", registration.domain, domain)
    if registration.expires_at <= now:
        raise MessageExpiredError(f"registration expired at {registration.expires_at}")
    if registration.expires_at - registration.issued_at > MAX_REGISTRATION_VALIDITY_MS:
        raise MessageExpiredError(
            f"a registration may be valid for at most {MAX_REGISTRATION_VALIDITY_MS} ms"
        )
    _check_not_ahead("registration", registration.issued_at, now)
    if registration.endpoint is None:
        raise InvalidOfferError("endpoint is required: the public URL of the job endpoint")
    if registration.model is None:
        raise InvalidOfferError("model is required: the served model's name")
    price_in = _price("price_in_per_mtok", registration.price_in_per_mtok)
    price_out = _price("price_out_per_mtok", registration.price_out_per_mtok)
    _check_on_chain(client, registration.provider, registration.public_key, min_stake)

    repo = ProviderRepository(session)
    received = utcnow()
    provider = repo.get(registration.provider, for_update=True)
    if provider is None:
        provider = Provider(
            address=registration.provider,
            public_key=registration.public_key,
            status=ProviderStatus.ACTIVE,
            reputation=0,
            registered_at=received,
            registration_issued_at_ms=registration.issued_at,
            last_heartbeat_at=received,
        )
        repo.add(provider)
    else:
        if registration.issued_at <= provider.registration_issued_at_ms:
            raise ReplayedMessageError(
                f"registration issued at {registration.issued_at} is not newer than the last "
                f"accepted one ({provider.registration_issued_at_ms})"
            )
        if provider.status == ProviderStatus.SUSPENDED:
            raise ProviderSuspendedError(f"{provider.address} is suspended by the market")
        provider.public_key = registration.public_key
        provider.registered_at = received
        provider.registration_issued_at_ms = registration.issued_at
        provider.last_heartbeat_at = received
    offer = _store_offer(repo, registration, registration.model, price_in, price_out, received)
    session.flush()
    return RegistrationAccepted(
        provider=provider.address,
        public_key=provider.public_key,
        registered_at=received,
        offer=OfferRead.model_validate(offer),
        heartbeat_timeout_s=heartbeat_timeout_s,
    )


def _store_offer(
    repo: ProviderRepository,
    registration: Registration,
    model: str,
    price_in: int,
    price_out: int,
    received: datetime,
) -> Offer:
    assert registration.endpoint is not None
    repo.delete_offers_except(registration.provider, model)
    offer = repo.get_offer(registration.provider, model)
    if offer is None:
        offer = Offer(provider_address=registration.provider, model=model)
    tariff = registration.tariff
    offer.model_digest = registration.model_digest
    offer.quantization = registration.quantization
    offer.price_in_per_mtok = price_in
    offer.price_out_per_mtok = price_out
    offer.max_concurrency = registration.max_concurrency
    offer.region = registration.region
    offer.tariff_micro_per_kwh = None if tariff is None else _tariff_micro(tariff.per_kwh)
    offer.tariff_currency = None if tariff is None else tariff.currency
    offer.pue_profile = registration.pue_profile
    offer.pue_milli = PUE_MILLI[registration.pue_profile]
    offer.host_overhead_milli = registration.host_overhead_milli
    offer.gpu = registration.gpu
    offer.gpu_count = registration.gpu_count or 1
    offer.declared_power_mw = registration.declared_power_mw
    offer.job_url = registration.endpoint
    offer.context_length = registration.context_length
    offer.updated_at = received
    return repo.add_offer(offer)


def key_rotated(session: Session, provider: str, old_key: str, new_key: str) -> bool:
    """The chain's `ProviderKeyRotated`: `provider` voided `old_key` and bound `new_key`.

    If the market still trusts `old_key` for the provider (it has not registered with a newer
    key yet), it trusts `new_key` instead, so that whatever the old key signs from now on
    (heartbeats, attestations, receipts) is refused, and takes the provider offline until it
    is heard from with the new key (a registration or heartbeat). Rotations the market has
    already followed, and providers it does not know, change nothing. Whether it changed
    anything."""
    record = ProviderRepository(session).get(checksum_address(provider), for_update=True)
    if record is None or record.public_key != old_key.lower():
        return False
    record.public_key = new_key.lower()
    record.last_heartbeat_at = None
    session.flush()
    return True


# -- heartbeats ------------------------------------------------------------------------------


def _registered(repo: ProviderRepository, address: Any) -> Provider:
    if not isinstance(address, str):
        raise MalformedProviderMessageError("provider must be an EVM address")
    provider = repo.get(checksum_address(address), for_update=True)
    if provider is None:
        raise ProviderNotFoundError(f"no provider {address} is registered; register first")
    return provider


def heartbeat(
    session: Session,
    envelope: SignedProviderMessage,
    *,
    client: SettlementClient,
    domain: Domain,
    heartbeat_timeout_s: int,
    now: int | None = None,
) -> HeartbeatAccepted:
    """Records that a registered, still active provider is alive (`issued_at` must rise)."""
    now = now_ms() if now is None else now
    repo = ProviderRepository(session)
    provider = _registered(repo, envelope.message.get("provider"))
    _verify_raw(envelope, HEARTBEAT_TYPE, provider.public_key)
    try:
        beat = Heartbeat.model_validate(envelope.message)
    except ValidationError as exc:
        raise MalformedProviderMessageError(f"invalid heartbeat: {_problems(exc)}") from exc
    _check_domain("heartbeat", beat.domain, domain)
    if beat.issued_at < now - HEARTBEAT_MAX_AGE_MS:
        raise MessageExpiredError(f"heartbeat issued at {beat.issued_at} is too old (now {now})")
    _check_not_ahead("heartbeat", beat.issued_at, now)
    if provider.heartbeat_issued_at_ms is not None and beat.issued_at <= (
        provider.heartbeat_issued_at_ms
    ):
        raise ReplayedMessageError(
            f"heartbeat issued at {beat.issued_at} is not newer than the last accepted one "
            f"({provider.heartbeat_issued_at_ms})"
        )
    if provider.status == ProviderStatus.SUSPENDED:
        raise ProviderSuspendedError(f"{provider.address} is suspended by the market")
    try:
        active = client.is_active_provider(provider.address)
    except ChainError as exc:
        raise ChainUnavailableError(f"the chain call failed: {exc}") from exc
    if not active:
        raise ProviderStakeTooLowError(f"{provider.address} is no longer active on-chain")
    received = utcnow()
    provider.last_heartbeat_at = received
    provider.heartbeat_issued_at_ms = beat.issued_at
    session.flush()
    return HeartbeatAccepted(
        provider=provider.address,
        received_at=received,
        online_until=received + timedelta(seconds=heartbeat_timeout_s),
    )


# -- attestations ----------------------------------------------------------------------------


def _stored_message(row: Attestation) -> AttestationMessage:
    return parse_signed(row.envelope, AttestationMessage).message


def _sum_or_none(values: list[int | None]) -> int | None:
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _row(envelope: Signed[AttestationMessage], digest: str, model: str | None) -> Attestation:
    message = envelope.message
    tokens = message.tokens
    return Attestation(
        provider_address=message.provider,
        seq=message.seq,
        digest=digest,
        prev_hash=message.prev_hash,
        window_start_ms=message.window_start,
        window_end_ms=message.window_end,
        energy_method=message.energy_method,
        energy_mj=message.energy_mj,
        prompt_tokens=tokens.prompt_tokens_end - tokens.prompt_tokens_start,
        generation_tokens=tokens.generation_tokens_end - tokens.generation_tokens_start,
        avg_power_mw=_sum_or_none([gpu.avg_power_mw for gpu in message.gpus]),
        power_limit_mw=_sum_or_none([gpu.power_limit_mw for gpu in message.gpus]),
        avg_running_milli=message.avg_running_requests_milli,
        avg_waiting_milli=message.avg_waiting_requests_milli,
        envelope=envelope.model_dump_json(),
        received_at=utcnow(),
        model=model,
        flagged=False,
    )


def run_checks(
    repo: ProviderRepository,
    row: Attestation,
    message: AttestationMessage,
    previous: AttestationMessage | None,
    model: str | None,
) -> list[CheckResult]:
    """Every plausibility check of one attestation: physics and data (`check_claim`), chain
    link, counters and window length against the previous one, and the attested output
    tokens against the provider's receipts that finished in the window."""
    results = check_claim(claim_from_attestation(message, model or "unknown"))
    results.append(check_chain_link(previous, message))
    if previous is not None:
        results.append(check_counters_monotonic(previous, message))
    results.append(check_window_length(message, previous))
    tokens = repo.receipt_tokens(row.provider_address, row.window_start_ms, row.window_end_ms)
    results.append(
        check_tokens_vs_receipts(
            row.generation_tokens, tokens, max_request_tokens=max(tokens, default=0)
        )
    )
    return results


def reputation_penalty(results: list[CheckResult]) -> int:
    """What an attestation's checks cost its provider: `PHYSICS_PENALTY` if a physics check
    failed, else `DATA_PENALTY` if a data check failed, else nothing."""
    failed = {r.kind for r in results if r.ok is False}
    if "physics" in failed:
        return PHYSICS_PENALTY
    if "data" in failed:
        return DATA_PENALTY
    return 0


def _record_checks(
    repo: ProviderRepository, provider: Provider, row: Attestation, results: list[CheckResult]
) -> None:
    penalty = reputation_penalty(results)
    row.flagged = penalty > 0
    provider.reputation -= penalty
    received = utcnow()
    repo.add_checks(
        [
            AttestationCheck(
                attestation_id=row.id,
                provider_address=row.provider_address,
                seq=row.seq,
                check=r.check,
                kind=r.kind,
                status=r.status,
                reason=r.reason[:500],
                created_at=received,
            )
            for r in results
        ]
    )


def submit_attestation(
    session: Session,
    envelope: Signed[AttestationMessage],
    *,
    domain: Domain,
    now: int | None = None,
    hold_kinds: Collection[str] | None = None,
) -> AttestationAccepted:
    """Stores a signed attestation that extends the provider's chain by exactly one.

    The first must have seq 0; the same attestation sent again is acknowledged as a
    duplicate; anything else that does not follow the last stored one is refused (409).
    A failed check of a kind in `hold_kinds` (default: `Settings.review_hold_kinds`) holds
    the provider's payment for review (`market.reviews`).
    """
    now = now_ms() if now is None else now
    repo = ProviderRepository(session)
    provider = _registered(repo, envelope.message.provider)
    try:
        message = verify(envelope, provider.public_key, domain)
    except WrongDomainError as exc:
        raise ProviderWrongDomainError(str(exc)) from exc
    except BadSignatureError as exc:
        raise ProviderSignatureError(str(exc)) from exc
    _check_not_ahead("attestation window", message.window_end, now)
    digest = message_digest(message)
    last = repo.latest_attestation(provider.address)
    if last is not None and message.seq <= last.seq:
        stored: Attestation | None = last
        if message.seq != last.seq:
            stored = repo.attestation_at(provider.address, message.seq)
        if stored is not None and stored.digest == digest:
            return AttestationAccepted(
                provider=provider.address, seq=message.seq, digest=digest, duplicate=True
            )
        raise BrokenAttestationChainError(
            f"attestation seq {message.seq} differs from the one stored (fork); the chain is "
            f"at seq {last.seq}"
        )
    previous = None if last is None else _stored_message(last)
    try:
        check_chain(previous, message)
    except BrokenChainError as exc:
        raise BrokenAttestationChainError(str(exc)) from exc
    offers = repo.offers_of([provider.address])
    model = offers[0].model if offers else None
    try:
        with session.begin_nested():
            row = repo.add_attestation(_row(envelope, digest, model))
    except IntegrityError as exc:  # a concurrent submission took this seq first
        raise BrokenAttestationChainError(
            f"attestation seq {message.seq} was stored concurrently"
        ) from exc
    results = run_checks(repo, row, message, previous, model)
    _record_checks(repo, provider, row, results)
    kinds = get_settings().review_hold_kinds if hold_kinds is None else hold_kinds
    reviews.hold_for_attestation(session, provider.address, row.seq, results, kinds)
    session.flush()
    return AttestationAccepted(
        provider=provider.address, seq=message.seq, digest=digest, duplicate=False
    )


# -- public view and routing -----------------------------------------------------------------


def is_online(provider: Provider, now: datetime, heartbeat_timeout_s: int) -> bool:
    """Active, with a heartbeat within the timeout."""
    return (
        provider.status == ProviderStatus.ACTIVE
        and provider.last_heartbeat_at is not None
        and provider.last_heartbeat_at >= now - timedelta(seconds=heartbeat_timeout_s)
    )


def _views(session: Session, providers: list[Provider], timeout_s: int) -> list[ProviderRead]:
    repo = ProviderRepository(session)
    addresses = [p.address for p in providers]
    offers: dict[str, list[OfferRead]] = {}
    for offer in repo.offers_of(addresses):
        offers.setdefault(offer.provider_address, []).append(OfferRead.model_validate(offer))
    latest = repo.latest_attestations(addresses)
    checks: dict[str, list[AttestationCheckRead]] = {}
    for check in repo.checks_of([row.id for row in latest.values()]):
        checks.setdefault(check.provider_address, []).append(
            AttestationCheckRead.model_validate(check)
        )
    efficiency: dict[str, list[EfficiencyRead]] = {}
    for steady in repo.steady_windows(addresses):
        efficiency.setdefault(steady.provider, []).append(efficiency_read(steady))
    calibrations = {row.provider_address: row for row in repo.calibrations_of(addresses)}
    held = reviews.held_providers(session, addresses)
    now = utcnow()
    return [
        ProviderRead(
            address=p.address,
            public_key=p.public_key,
            status=str(p.status),
            reputation=p.reputation,
            registered_at=p.registered_at,
            last_heartbeat_at=p.last_heartbeat_at,
            online=is_online(p, now, timeout_s),
            offers=offers.get(p.address, []),
            latest_attestation=(
                AttestationSummary.model_validate(latest[p.address])
                if p.address in latest
                else None
            ),
            latest_checks=checks.get(p.address, []),
            efficiency=efficiency.get(p.address, []),
            calibration=(
                calibration_read(calibrations[p.address]) if p.address in calibrations else None
            ),
            payment_held=p.address in held,
        )
        for p in providers
    ]


def efficiency_read(steady: SteadyWindows) -> EfficiencyRead:
    """The published figures of one provider's steady windows on one model."""
    return EfficiencyRead(
        model=steady.model,
        windows=steady.windows,
        joules_per_token=steady.joules_per_token,
        tokens_per_s=steady.tokens_per_s,
        avg_concurrency=steady.concurrency,
    )


def list_providers(session: Session, heartbeat_timeout_s: int) -> list[ProviderRead]:
    """Every provider's public view."""
    return _views(session, list(ProviderRepository(session).all()), heartbeat_timeout_s)


def get_provider(session: Session, address: str, heartbeat_timeout_s: int) -> ProviderRead:
    """One provider's public view; `ProviderNotFoundError` if it never registered."""
    address = checksum_address(address)
    provider = ProviderRepository(session).get(address)
    if provider is None:
        raise ProviderNotFoundError(f"no provider {address}")
    return _views(session, [provider], heartbeat_timeout_s)[0]


def live_offer(row: RoutableOffer) -> LiveOffer:
    """What routing keeps of an online provider's offer: its site, and where its steady
    windows were measured, J/token, tokens/s, gCO2 and energy cost per million output tokens
    through the accounting chain (J/token x host overhead x PUE / 3.6e6 x grid gCO2/kWh or x
    tariff, per 1e6 tokens). Unmeasured: None, so it sorts last and fails energy caps."""
    offer = row.offer
    site = site_profile(offer)
    steady = row.steady
    joules_per_token = gco2 = cost = concurrency = None
    tokens_per_s = 0.0
    if steady is not None:
        joules_per_token = steady.joules_per_token
        tokens_per_s = steady.tokens_per_s
        concurrency = steady.concurrency
        per_mtok_mj = steady.energy_mj * 1_000_000 // steady.generation_tokens
        chain = energy_chain("measured", per_mtok_mj, site, token_decimals=TOKEN_DECIMALS)
        gco2 = None if chain.gco2 is None else float(chain.gco2)
        energy_cost = chain.energy_cost
        if energy_cost is not None and energy_cost.currency in DEFAULT_RATES:
            rate = DEFAULT_RATES[energy_cost.currency]
            cost = float(energy_cost.amount * rate * 10**TOKEN_DECIMALS)
    return LiveOffer(
        provider=offer.provider_address,
        model=offer.model,
        region=offer.region or "",
        price_in_per_mtok=offer.price_in_per_mtok,
        price_out_per_mtok=offer.price_out_per_mtok,
        max_concurrency=offer.max_concurrency,
        job_url=offer.job_url,
        public_key=row.public_key,
        tokens_per_s=tokens_per_s,
        joules_per_token=joules_per_token,
        gco2_per_mtok=gco2,
        energy_cost_per_mtok=cost,
        energy_concurrency=concurrency,
        context_length=offer.context_length,
        site=site,
    )


def live_offers(session: Session, heartbeat_timeout_s: int) -> list[LiveOffer]:
    """The offers routing may use now: active providers with a fresh heartbeat (one query)."""
    now = utcnow()
    online_since = now - timedelta(seconds=heartbeat_timeout_s)
    rows = ProviderRepository(session).routable_offers(online_since, int(now.timestamp() * 1000))
    return [live_offer(row) for row in rows]


# -- the provider's energy statement ---------------------------------------------------------


def _line(
    model: str | None, epoch: int | None, receipts: list[Receipt], fallback: dict[str, SiteProfile]
) -> StatementLine:
    energy = summarize(receipts, fallback)
    revenue = metered = 0
    for receipt in receipts:
        share = receipt.charge - receipt.fee
        revenue += share
        if receipt.energy_mj is not None and receipt.energy_method in ("measured", "estimated"):
            metered += share
    has_metered = energy.measured + energy.estimated > 0
    margin = None
    if has_metered and energy.receipts_without_cost == 0:
        margin = metered - energy.energy_cost_base_units
    return StatementLine(
        model=model,
        epoch=epoch,
        requests=len(receipts),
        revenue=revenue,
        revenue_metered=metered,
        revenue_unmeasured=revenue - metered,
        energy=energy,
        energy_margin=margin,
    )


def provider_statement(session: Session, address: str) -> ProviderStatement:
    """Revenue (charges - fee) against energy cost per model and epoch: the energy margin.

    Each receipt's energy cost comes from its accounting chain at the site it was served at;
    unmeasured receipts are counted with their revenue apart (`revenue_unmeasured`) and left
    out of the margin, never costed at 0.
    """
    address = checksum_address(address)
    repo = ProviderRepository(session)
    receipts = list(repo.receipts_of_provider(address))
    if not receipts and repo.get(address) is None:
        raise ProviderNotFoundError(f"no provider {address}")
    offers = repo.offers_of([address])
    fallback = {address: site_profile(offers[0])} if offers else {}
    groups: dict[tuple[str, int | None], list[Receipt]] = {}
    for receipt in receipts:
        groups.setdefault((receipt.model, receipt.epoch), []).append(receipt)
    ordered = sorted(groups, key=lambda k: (k[0], -1 if k[1] is None else k[1]))
    return ProviderStatement(
        provider=address,
        lines=[_line(model, epoch, groups[(model, epoch)], fallback) for model, epoch in ordered],
        totals=_line(None, None, receipts, fallback),
    )


# -- calibrations ----------------------------------------------------------------------------

CALIBRATION_TYPE = "calibration"
CALIBRATION_MAX_AGE_MS = 60 * 60 * 1000
"""A calibration issued longer ago than this on arrival is refused as stale."""


def _calibration_levels(message: dict[str, Any]) -> list[CalibrationLevelRead]:
    levels = message.get("levels")
    if not isinstance(levels, list) or not levels:
        raise MalformedProviderMessageError("calibration levels must be a non-empty list")
    try:
        return [
            CalibrationLevelRead(
                concurrency=int(level["concurrency"]),
                tokens_per_s=str(Decimal(level["tokens_per_s"])),
                joules_per_token=(
                    None
                    if level["joules_per_token"] is None
                    else str(Decimal(level["joules_per_token"]))
                ),
                energy_method=str(level["energy"]["method"]),
                unmeasured_reason=(
                    str(level["energy"].get("basis")) if level["joules_per_token"] is None else None
                ),
                generation_tokens=int(level["generation_tokens"]),
            )
            for level in levels
        ]
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise MalformedProviderMessageError(f"invalid calibration level: {exc}") from exc


def submit_calibration(
    session: Session, envelope: SignedProviderMessage, *, domain: Domain, now: int | None = None
) -> CalibrationRead:
    """Stores a registered provider's signed calibration (docs/agent-protocol.md,
    "Calibration"): signature by the provider's registered key, version 1, the market's
    domain, issued within `CALIBRATION_MAX_AGE_MS` and not ahead of the clock, and newer than
    the calibration held (else a replay, 409). The newest replaces the older."""
    now = now_ms() if now is None else now
    repo = ProviderRepository(session)
    provider = _registered(repo, envelope.message.get("provider"))
    _verify_raw(envelope, CALIBRATION_TYPE, provider.public_key)
    message = envelope.message
    if message.get("version") != 1 or message.get("public_key") != envelope.signer:
        raise MalformedProviderMessageError("not a calibration v1 signed by its public_key")
    try:
        got = Domain.model_validate(message.get("domain"))
    except ValidationError as exc:
        raise MalformedProviderMessageError(f"invalid domain: {_problems(exc)}") from exc
    _check_domain("calibration", got, domain)
    issued_at = message.get("issued_at")
    if not isinstance(issued_at, int):
        raise MalformedProviderMessageError("issued_at must be unix milliseconds")
    if issued_at < now - CALIBRATION_MAX_AGE_MS:
        raise MessageExpiredError(f"calibration issued at {issued_at} is too old (now {now})")
    _check_not_ahead("calibration", issued_at, now)
    model = message.get("model")
    if not isinstance(model, str) or not model:
        raise MalformedProviderMessageError("model must be the served model's name")
    levels = _calibration_levels(message)
    meter = message.get("meter")
    method = str(meter.get("method")) if isinstance(meter, dict) else "unmeasured"
    digest = message.get("model_digest")
    row = repo.calibration_of(provider.address, for_update=True)
    if row is not None and issued_at <= row.issued_at_ms:
        raise ReplayedMessageError(
            f"calibration issued at {issued_at} is not newer than the one held ({row.issued_at_ms})"
        )
    if row is None:
        row = Calibration(provider_address=provider.address)
        session.add(row)
    row.model = model[:256]
    row.model_digest = digest if isinstance(digest, str) else None
    row.meter_method = method[:16]
    row.issued_at_ms = issued_at
    row.levels = json.dumps([level.model_dump() for level in levels])
    row.envelope = envelope.model_dump_json()
    row.received_at = utcnow()
    session.flush()
    return calibration_read(row)


def calibration_read(row: Calibration) -> CalibrationRead:
    """The public view of a stored calibration."""
    return CalibrationRead(
        model=row.model,
        model_digest=row.model_digest,
        meter_method=row.meter_method,
        issued_at=row.issued_at_ms,
        received_at=row.received_at,
        levels=[CalibrationLevelRead.model_validate(lv) for lv in json.loads(row.levels)],
    )
