"""The steps of `provider-agent register` (bind the key, stake, announce to the market) and
of `provider-agent rotate-key` (bind a new key in place of the old)."""

from __future__ import annotations

import httpx

from protocol.chain.deploy import Deployment
from protocol.chain.settlement import SettlementClient
from protocol.chain.transactor import Transactor
from protocol.keys import ProviderIdentity
from provider_agent.config import AgentSettings
from provider_agent.onchain import ZERO_KEY, ChainSetupError, network_tokens
from provider_agent.pricing import PricingError, with_resolved_prices
from provider_agent.registration import signed_registration


def _sender(client: SettlementClient, identity: ProviderIdentity) -> Transactor:
    if client.w3.eth.get_balance(identity.eth_account.address) == 0:
        raise ChainSetupError(
            f"{identity.address} has no gas money: send it some of the chain's native coin first"
        )
    return Transactor(client.w3, identity.eth_account)


def bind_key(client: SettlementClient, identity: ProviderIdentity) -> str:
    """Bind the Ed25519 key to the address once; say what was done."""
    bound = client.provider_key(identity.address)
    if bound == ZERO_KEY:
        client.register_provider(
            _sender(client, identity), identity.signing_key.verify_key.encode()
        )
        return f"bound {identity.public_key_hex} to {identity.address}"
    if "0x" + bound.hex() == identity.public_key_hex:
        return f"key already bound to {identity.address}: skipped"
    raise ChainSetupError(
        f"{identity.address} is already bound to another key 0x{bound.hex()}; an address binds"
        " once: use the keystore holding that key, or `init` a new identity elsewhere (if a"
        " `provider-agent rotate-key` was interrupted, run it again to finish it)"
    )


def rotate_bound_key(
    client: SettlementClient, current: ProviderIdentity, staged: ProviderIdentity
) -> str:
    """Bind the staged Ed25519 key in place of the current one; say what was done. Done
    already (an interrupted rotation) is fine; a key bound by neither keystore is refused."""
    bound = "0x" + client.provider_key(current.address).hex()
    if bound == staged.public_key_hex:
        return f"{staged.public_key_hex} is bound already (an interrupted rotation): finishing it"
    if bound == "0x" + ZERO_KEY.hex():
        raise ChainSetupError(
            f"{current.address} has bound no key yet, so there is none to rotate: run"
            " `provider-agent register`"
        )
    if bound != current.public_key_hex:
        raise ChainSetupError(
            f"{current.address} binds {bound}, neither this keystore's key nor the staged one"
        )
    client.rotate_provider_key(_sender(client, current), staged.signing_key.verify_key.encode())
    return f"bound {staged.public_key_hex} in place of {current.public_key_hex}"


def stake_to(client: SettlementClient, identity: ProviderIdentity, target: int | None) -> str:
    """Stake what is missing to reach `target` (default: the contract's minimum)."""
    target = client.min_provider_stake() if target is None else target
    staked = client.stake_of(identity.address)
    if staked >= target:
        return f"{network_tokens(staked)} staked, target {network_tokens(target)}: skipped"
    needed = target - staked
    held = client.network_balance(identity.address)
    if held < needed:
        raise ChainSetupError(
            f"{identity.address} holds {network_tokens(held)} but staking needs"
            f" {network_tokens(needed)} more: get network tokens sent to it first"
        )
    client.stake(_sender(client, identity), needed)
    return f"staked {network_tokens(needed)}; now {network_tokens(target)}"


def register_with_market(
    http: httpx.Client, settings: AgentSettings, identity: ProviderIdentity, deployment: Deployment
) -> tuple[bool, str]:
    """Post the signed registration; (ok, message). A 404 means the market lacks the route.

    "auto" prices are resolved to integers first (the market refuses "auto").
    """
    url = f"{settings.market_url}/providers/register"
    try:
        settings = with_resolved_prices(settings)
    except PricingError as exc:
        return False, str(exc)
    try:
        response = http.post(url, json=signed_registration(settings, identity, deployment))
    except httpx.HTTPError as exc:
        return False, f"market unreachable at {url}: {exc}"
    if response.status_code == 404:
        return True, f"the market has no {url} yet (404): skipped; the on-chain part is done"
    if response.is_success:
        return True, f"registered with the market at {settings.market_url}"
    return False, f"the market refused the registration ({response.status_code}): {response.text}"
