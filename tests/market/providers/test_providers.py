"""Providers against the real app, database (SQLite and PostgreSQL) and embedded chain."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from market import errors as market_errors
from market.db import utcnow
from market.providers.errors import ALL_ERRORS
from market.providers.models import Provider
from market.providers.service import key_rotated
from market.providers.tasks import refresh_routing
from market.runtime import Runtime
from market.settlement.repository import SettlementRepository
from market.settlement.service import CHAIN_CURSOR
from market.settlement.tasks import TaskContext, watch_deposits
from protocol.chain.transactor import Transactor
from protocol.keys import ProviderIdentity
from protocol.messages import Attestation, Domain, Signed
from provider_agent.market_client import MarketClient, MarketError
from tests.market.providers.factories import (
    JOB_URL,
    MODEL,
    ChainProviders,
    attestation,
    heartbeat,
    now_ms,
    resign,
)


def _code(response: Any) -> str:
    return str(response.json()["error"]["code"])


def _registered(client: TestClient, providers: ChainProviders) -> ProviderIdentity:
    identity = providers.new()
    response = client.post("/providers/register", json=providers.registration(identity))
    assert response.status_code == 200, response.text
    return identity


def _post_attestation(client: TestClient, envelope: Signed[Attestation]) -> Any:
    return client.post(
        "/providers/attestations",
        content=envelope.model_dump_json(),
        headers={"Content-Type": "application/json"},
    )


# -- registration ----------------------------------------------------------------------------


def test_registration_puts_the_offer_in_routing(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = providers.new()
    response = client.post("/providers/register", json=providers.registration(identity))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == identity.address
    assert body["offer"]["price_out_per_mtok"] == 400_000
    assert body["offer"]["pue_milli"] == 1560

    asyncio.run(refresh_routing(runtime))
    offer = runtime.routing.get(MODEL, identity.address)
    assert offer is not None
    assert (offer.price_in_per_mtok, offer.price_out_per_mtok) == (100_000, 400_000)
    assert (offer.job_url, offer.region, offer.max_concurrency) == (JOB_URL, "DE", 4)
    assert offer.public_key == identity.public_key_hex
    assert offer.joules_per_token is None  # no attestation yet

    view = client.get(f"/providers/{identity.address.lower()}").json()
    assert view["online"] is True
    assert view["offers"][0]["model"] == MODEL
    assert view["latest_attestation"] is None
    assert [p["address"] for p in client.get("/providers").json()] == [identity.address]


def test_a_newer_registration_replaces_the_offer(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    newer = providers.registration(identity, now=now_ms() + 1, price_out_per_mtok=300_000)
    assert client.post("/providers/register", json=newer).status_code == 200
    asyncio.run(refresh_routing(runtime))
    offer = runtime.routing.get(MODEL, identity.address)
    assert offer is not None
    assert offer.price_out_per_mtok == 300_000


def test_a_key_not_bound_on_chain_is_refused(client: TestClient, providers: ChainProviders) -> None:
    identity = providers.new(bind=False)
    response = client.post("/providers/register", json=providers.registration(identity))
    assert response.status_code == 403
    assert _code(response) == "provider_key_not_bound"


def test_another_key_than_the_bound_one_is_refused(
    client: TestClient, providers: ChainProviders
) -> None:
    bound = providers.new()
    impostor = dataclasses.replace(
        ProviderIdentity.generate(), eth_account=bound.eth_account
    )  # same address, other Ed25519 key
    response = client.post("/providers/register", json=providers.registration(impostor))
    assert response.status_code == 403
    assert _code(response) == "provider_key_not_bound"


def test_a_stake_below_the_minimum_is_refused(
    client: TestClient, providers: ChainProviders
) -> None:
    identity = providers.new(stake=providers.min_stake - 1)
    response = client.post("/providers/register", json=providers.registration(identity))
    assert response.status_code == 403
    assert _code(response) == "provider_stake_too_low"


def test_the_markets_own_minimum_stake_applies(runtime: Runtime, providers: ChainProviders) -> None:
    strict = dataclasses.replace(
        runtime,
        settings=runtime.settings.model_copy(
            update={"min_provider_stake": 2 * providers.min_stake}
        ),
    )
    from market.app import create_app

    app = create_app(runtime=strict)
    app.state.runtime = strict
    identity = providers.new()  # active on-chain with the contract's minimum
    response = TestClient(app).post("/providers/register", json=providers.registration(identity))
    assert response.status_code == 403
    assert _code(response) == "provider_stake_too_low"


def test_a_tampered_registration_is_refused(client: TestClient, providers: ChainProviders) -> None:
    identity = providers.new()
    envelope = providers.registration(identity)
    envelope["message"]["price_out_per_mtok"] = "1"
    response = client.post("/providers/register", json=envelope)
    assert response.status_code == 401
    assert _code(response) == "bad_provider_signature"


def test_a_replayed_registration_is_refused(client: TestClient, providers: ChainProviders) -> None:
    identity = providers.new()
    envelope = providers.registration(identity)
    assert client.post("/providers/register", json=envelope).status_code == 200
    again = client.post("/providers/register", json=envelope)
    assert again.status_code == 409
    assert _code(again) == "replayed_message"
    older = providers.registration(identity, now=envelope["message"]["issued_at"] - 1000)
    assert client.post("/providers/register", json=older).status_code == 409


def test_wrong_domain_and_expired_registrations_are_refused(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = providers.new()
    message = providers.registration(identity)["message"]
    other = {**message, "domain": {**message["domain"], "chain_id": 999}}
    response = client.post("/providers/register", json=resign(identity, message["type"], other))
    assert (response.status_code, _code(response)) == (403, "wrong_domain")
    expired = providers.registration(identity, now=now_ms() - 10 * 60 * 1000)
    response = client.post("/providers/register", json=expired)
    assert (response.status_code, _code(response)) == (410, "message_expired")
    ahead = providers.registration(identity, now=now_ms() + 60_000)
    response = client.post("/providers/register", json=ahead)
    assert (response.status_code, _code(response)) == (422, "message_not_yet_valid")


@pytest.mark.parametrize(
    ("offer", "needle"),
    [
        ({"price_out_per_mtok": "auto"}, "auto"),
        ({"public_url": None}, "endpoint"),
    ],
)
def test_an_incomplete_offer_is_refused(
    client: TestClient, providers: ChainProviders, offer: dict[str, Any], needle: str
) -> None:
    identity = providers.new(bind=False)  # the offer is checked before the chain
    response = client.post("/providers/register", json=providers.registration(identity, **offer))
    assert response.status_code == 422
    assert _code(response) == "invalid_offer"
    assert needle in response.json()["error"]["message"]


def test_an_invalid_field_is_refused_with_its_name(
    client: TestClient, providers: ChainProviders
) -> None:
    identity = providers.new(bind=False)
    message = providers.registration(identity)["message"]
    message["max_concurrency"] = 0
    response = client.post("/providers/register", json=resign(identity, message["type"], message))
    assert response.status_code == 422
    assert "max_concurrency" in response.json()["error"]["message"]


def test_the_engines_context_length_is_stored_routed_and_listed(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    long, short, unreported = providers.new(), providers.new(), providers.new()
    for identity, context in ((long, 32_768), (short, 4_096), (unreported, None)):
        registration = providers.registration(identity, context_length=context)
        assert registration["message"]["context_length"] == context
        response = client.post("/providers/register", json=registration)
        assert response.status_code == 200, response.text
        assert response.json()["offer"]["context_length"] == context
    asyncio.run(refresh_routing(runtime))
    for identity, context in ((long, 32_768), (short, 4_096), (unreported, None)):
        offer = runtime.routing.get(MODEL, identity.address)
        assert offer is not None
        assert offer.context_length == context
    view = client.get(f"/providers/{short.address}").json()
    assert view["offers"][0]["context_length"] == 4_096

    [model] = client.get("/v1/models").json()["data"]
    assert model["context_length"] == 32_768  # the longest any live provider serves
    assert model["market"]["context_length"] == {"min": 4_096, "max": 32_768}
    assert client.get(f"/v1/models/{MODEL}").json() == model

    # the newest registration wins: an engine that no longer reports it has none
    for identity in (long, short):
        newer = providers.registration(identity, now=now_ms() + 1)
        assert client.post("/providers/register", json=newer).status_code == 200
    asyncio.run(refresh_routing(runtime))
    [model] = client.get("/v1/models").json()["data"]
    assert (model["context_length"], model["market"]["context_length"]) == (None, None)


@pytest.mark.parametrize("context_length", [0, -1, "4096", True, 2**31])
def test_a_context_length_that_is_not_a_positive_integer_is_refused(
    client: TestClient, providers: ChainProviders, context_length: object
) -> None:
    identity = providers.new(bind=False)  # the offer is checked before the chain
    message = providers.registration(identity)["message"]
    message["context_length"] = context_length
    response = client.post("/providers/register", json=resign(identity, message["type"], message))
    assert response.status_code == 422
    assert _code(response) == "invalid_offer"
    assert "context_length" in response.json()["error"]["message"]


# -- heartbeats ------------------------------------------------------------------------------


def test_heartbeats_keep_a_provider_in_routing_and_replays_are_refused(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    domain = runtime.chain.domain
    beat = heartbeat(identity, domain, now_ms())
    response = client.post("/providers/heartbeat", json=beat)
    assert response.status_code == 200, response.text
    again = client.post("/providers/heartbeat", json=beat)
    assert (again.status_code, _code(again)) == (409, "replayed_message")

    # Silent for longer than the timeout: out of routing, and shown offline.
    stale = utcnow() - timedelta(seconds=runtime.settings.heartbeat_timeout_s + 1)
    with runtime.sessions.begin() as session:
        session.execute(
            update(Provider)
            .where(Provider.address == identity.address)
            .values(last_heartbeat_at=stale)
        )
    asyncio.run(refresh_routing(runtime))
    assert runtime.routing.get(MODEL, identity.address) is None
    assert client.get(f"/providers/{identity.address}").json()["online"] is False

    # A fresh heartbeat brings it back.
    fresh = heartbeat(identity, domain, now_ms())
    assert client.post("/providers/heartbeat", json=fresh).is_success
    asyncio.run(refresh_routing(runtime))
    assert runtime.routing.get(MODEL, identity.address) is not None


def test_heartbeats_are_checked(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    domain = runtime.chain.domain
    stranger = providers.new()
    response = client.post("/providers/heartbeat", json=heartbeat(stranger, domain, now_ms()))
    assert (response.status_code, _code(response)) == (404, "provider_not_found")

    identity = _registered(client, providers)
    forged = heartbeat(identity, domain, now_ms())
    forged["signature"] = "0x" + "00" * 64
    response = client.post("/providers/heartbeat", json=forged)
    assert (response.status_code, _code(response)) == (401, "bad_provider_signature")
    old = heartbeat(identity, domain, now_ms() - 120_000)
    response = client.post("/providers/heartbeat", json=old)
    assert (response.status_code, _code(response)) == (410, "message_expired")
    elsewhere = Domain(chain_id=999, settlement_contract=domain.settlement_contract)
    response = client.post("/providers/heartbeat", json=heartbeat(identity, elsewhere, now_ms()))
    assert (response.status_code, _code(response)) == (403, "wrong_domain")


# -- attestations ----------------------------------------------------------------------------


def test_an_attestation_chain_is_accepted_and_feeds_routing(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    domain = runtime.chain.domain
    start = now_ms() - 600_000
    first = attestation(identity, domain, 0, None, window_start=start)
    second = attestation(identity, domain, 1, first.message, window_start=start + 60_000)
    for envelope in (first, second):
        response = _post_attestation(client, envelope)
        assert response.status_code == 200, response.text
        assert response.json()["duplicate"] is False
    again = _post_attestation(client, second)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True

    asyncio.run(refresh_routing(runtime))
    offer = runtime.routing.get(MODEL, identity.address)
    assert offer is not None
    # 60,000,000 mJ per 120,000 output tokens, both windows: 0.5 J/token.
    assert offer.joules_per_token == pytest.approx(0.5)

    latest = client.get(f"/providers/{identity.address}").json()["latest_attestation"]
    assert latest["seq"] == 1
    assert (latest["energy_mj"], latest["generation_tokens"]) == (60_000_000, 120_000)


def test_unmeasured_windows_give_no_energy_figure(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    start = now_ms() - 120_000
    envelope = attestation(
        identity, runtime.chain.domain, 0, None, window_start=start, method="unmeasured"
    )
    assert _post_attestation(client, envelope).status_code == 200
    asyncio.run(refresh_routing(runtime))
    offer = runtime.routing.get(MODEL, identity.address)
    assert offer is not None
    assert offer.joules_per_token is None


def test_gaps_forks_and_bad_starts_are_refused(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    domain = runtime.chain.domain
    start = now_ms() - 600_000
    # A seq-1 message needs a non-zero prev_hash; build it on a throwaway seq 0.
    ghost = attestation(identity, domain, 0, None, window_start=start - 120_000, energy_mj=1)
    late_start = attestation(identity, domain, 1, ghost.message, window_start=start)
    response = _post_attestation(client, late_start)
    assert (response.status_code, _code(response)) == (409, "broken_attestation_chain")

    first = attestation(identity, domain, 0, None, window_start=start)
    assert _post_attestation(client, first).status_code == 200
    second = attestation(identity, domain, 1, first.message, window_start=start + 60_000)
    third = attestation(identity, domain, 2, second.message, window_start=start + 120_000)
    response = _post_attestation(client, third)  # gap: seq 1 missing
    assert (response.status_code, _code(response)) == (409, "broken_attestation_chain")
    assert _post_attestation(client, second).status_code == 200

    fork = attestation(identity, domain, 1, first.message, window_start=start + 60_000, energy_mj=7)
    response = _post_attestation(client, fork)
    assert (response.status_code, _code(response)) == (409, "broken_attestation_chain")
    wrong_parent = attestation(identity, domain, 2, fork.message, window_start=start + 120_000)
    response = _post_attestation(client, wrong_parent)
    assert (response.status_code, _code(response)) == (409, "broken_attestation_chain")


def test_attestations_are_checked_against_the_registered_key(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    domain = runtime.chain.domain
    impostor = dataclasses.replace(ProviderIdentity.generate(), eth_account=identity.eth_account)
    forged = attestation(impostor, domain, 0, None, window_start=now_ms() - 120_000)
    response = _post_attestation(client, forged)
    assert (response.status_code, _code(response)) == (401, "bad_provider_signature")
    stranger = providers.new()
    response = _post_attestation(
        client, attestation(stranger, domain, 0, None, window_start=now_ms() - 120_000)
    )
    assert (response.status_code, _code(response)) == (404, "provider_not_found")


# -- key rotation ----------------------------------------------------------------------------


def _rotate(runtime: Runtime, identity: ProviderIdentity) -> ProviderIdentity:
    """Binds a fresh Ed25519 key to the identity's address on-chain; the new identity."""
    rotated = dataclasses.replace(ProviderIdentity.generate(), eth_account=identity.eth_account)
    sender = Transactor(runtime.chain.client.w3, identity.eth_account)
    runtime.chain.client.rotate_provider_key(sender, bytes(rotated.signing_key.verify_key))
    return rotated


def _watch(runtime: Runtime, from_block: int) -> int:
    """One chain-watcher run over the blocks from `from_block` (no confirmations; the session's
    chain holds every earlier test's blocks, too many to scan within a heartbeat timeout)."""
    with runtime.sessions.begin() as session:
        SettlementRepository(session).lock_cursor(CHAIN_CURSOR, from_block)
    settings = runtime.settings.model_copy(update={"confirmations": 0})
    return watch_deposits(TaskContext(settings, runtime.sessions, runtime.chain))


def test_a_key_rotated_on_chain_is_void_at_once(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    domain = runtime.chain.domain
    start = runtime.chain.client.w3.eth.block_number
    rotated = _rotate(runtime, identity)
    assert _watch(runtime, start) == 1

    # Whatever the old key signs is refused, and the provider is offline until it is heard
    # from with the new key.
    response = client.post("/providers/heartbeat", json=heartbeat(identity, domain, now_ms()))
    assert (response.status_code, _code(response)) == (401, "bad_provider_signature")
    forged = attestation(identity, domain, 0, None, window_start=now_ms() - 120_000)
    response = _post_attestation(client, forged)
    assert (response.status_code, _code(response)) == (401, "bad_provider_signature")
    asyncio.run(refresh_routing(runtime))
    assert runtime.routing.get(MODEL, identity.address) is None
    view = client.get(f"/providers/{identity.address}").json()
    assert (view["online"], view["public_key"]) == (False, rotated.public_key_hex)

    # The agent, restarted on the new key, registers again: back in routing with that key.
    again = providers.registration(rotated, now=now_ms() + 1)
    assert client.post("/providers/register", json=again).status_code == 200
    asyncio.run(refresh_routing(runtime))
    offer = runtime.routing.get(MODEL, identity.address)
    assert offer is not None
    assert offer.public_key == rotated.public_key_hex
    beat = client.post("/providers/heartbeat", json=heartbeat(rotated, domain, now_ms() + 2))
    assert beat.status_code == 200, beat.text


def test_rotations_the_market_already_followed_change_nothing(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    start = runtime.chain.client.w3.eth.block_number
    middle = _rotate(runtime, identity)
    newest = _rotate(runtime, middle)  # two rotations before the watcher looks
    again = providers.registration(newest, now=now_ms() + 1)
    assert client.post("/providers/register", json=again).status_code == 200

    assert _watch(runtime, start) == 2  # both rotations, after the registration
    asyncio.run(refresh_routing(runtime))
    offer = runtime.routing.get(MODEL, identity.address)
    assert offer is not None, "a registered, newer key is not voided by an older rotation"
    assert offer.public_key == newest.public_key_hex
    with runtime.sessions.begin() as session:  # an unknown provider's rotation: nothing
        assert not key_rotated(session, providers.new().address, "0x" + "11" * 32, "0x" + "22" * 32)


def test_unknown_provider_is_404(client: TestClient) -> None:
    response = client.get("/providers/0x" + "12" * 20)
    assert (response.status_code, _code(response)) == (404, "provider_not_found")


# -- errors ----------------------------------------------------------------------------------


def test_error_codes_are_distinct_from_the_markets() -> None:
    market_codes = {
        value.code
        for value in vars(market_errors).values()
        if isinstance(value, type) and issubclass(value, market_errors.MarketError)
    }
    ours = [cls.code for cls in ALL_ERRORS]
    assert len(ours) == len(set(ours))
    assert not set(ours) & market_codes
    for cls in ALL_ERRORS:
        assert 400 <= cls.status_code <= 599
        assert cls.__doc__


def test_an_agent_whose_clock_ran_ahead_heartbeats_again_once_it_is_set_right(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    clock = [now_ms() + 3_600_000]  # the rig's clock an hour ahead (no time sync yet)

    async def beats() -> list[int | str]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport) as http:
            agent = MarketClient(
                "http://market", identity, runtime.chain.domain, http, lambda: clock[0]
            )
            answers: list[int | str] = []
            for _ in range(2):
                try:
                    await agent.heartbeat()
                    answers.append(200)
                except MarketError as exc:
                    answers.append(exc.code or "")
            clock[0] = now_ms()  # set right
            await agent.heartbeat()
            await agent.heartbeat()
            return [*answers, 200, 200]

    assert asyncio.run(beats()) == ["message_not_yet_valid", "message_not_yet_valid", 200, 200]
