"""The agent's calls to the market over HTTP: registration, heartbeats, attestations.

Wire formats: docs/agent-protocol.md and `market/providers/schemas.py`. The heartbeat is
`provider_heartbeat` v1 (`provider`, `issued_at` as a strictly rising nonce, `domain`),
signed over `signing_input("provider_heartbeat", message)` in the usual envelope.

Receipts travel in the job response; `receipt_states` asks the market afterwards what it
holds of the outbox's receipts (`POST /providers/receipts/status`, which only reads).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from protocol.canonical import JsonValue, signing_input, to_hex
from protocol.keys import ProviderIdentity
from protocol.messages import Attestation, Domain, Receipt, Signed

HEARTBEAT_TYPE = "provider_heartbeat"


class MarketError(Exception):
    """The market could not be reached or refused a message; `status` is its HTTP status and
    `code` the `error.code` of its answer's body."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        """`status` is `None` when the market did not answer at all, `code` when its answer
        had no error body either."""
        super().__init__(message)
        self.status = status
        self.code = code


def _error_code(response: httpx.Response) -> str | None:
    """`error.code` of the market's error body (`{"error": {"code", "message"}}`), if any."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def _domain_json(domain: Domain) -> dict[str, JsonValue]:
    return {"chain_id": domain.chain_id, "settlement_contract": domain.settlement_contract}


def heartbeat_envelope(
    identity: ProviderIdentity, domain: Domain, issued_at: int
) -> dict[str, Any]:
    """The signed heartbeat envelope `{"message", "signer", "signature"}`."""
    message: dict[str, JsonValue] = {
        "type": HEARTBEAT_TYPE,
        "version": 1,
        "provider": identity.address,
        "issued_at": issued_at,
        "domain": _domain_json(domain),
    }
    signature = identity.signing_key.sign(signing_input(HEARTBEAT_TYPE, message)).signature
    return {"message": message, "signer": identity.public_key_hex, "signature": to_hex(signature)}


async def fetch_market_domain(http: httpx.AsyncClient, market_url: str) -> Domain:
    """The market's chain id and Settlement contract, from `GET /market` (its deployment,
    which it publishes whether or not its chain node answers right now)."""
    url = f"{market_url}/market"
    try:
        body = (await http.get(url)).raise_for_status().json()
        return Domain(chain_id=body["chain_id"], settlement_contract=body["settlement_contract"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
        raise MarketError(f"cannot read the market's domain from {url}: {exc}", status) from exc


class MarketClient:
    """Posts the agent's signed messages to one market."""

    def __init__(
        self,
        market_url: str,
        identity: ProviderIdentity,
        domain: Domain,
        http: httpx.AsyncClient | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        """`http` is used for every call (one with a 10 s timeout is made if not given);
        `clock_ms`, the wall clock in Unix milliseconds."""
        self.market_url = market_url.rstrip("/")
        self.identity = identity
        self.domain = domain
        self._http = http or httpx.AsyncClient(timeout=10.0)
        self._own_http = http is None
        self._clock_ms = clock_ms
        self._last_heartbeat_ms = 0

    async def _send(self, method: str, url: str, payload: Any = None) -> httpx.Response:
        """The market's successful answer; `MarketError` (with the status) otherwise."""
        try:
            response = await self._http.request(method, url, json=payload)
        except httpx.HTTPError as exc:
            raise MarketError(f"market unreachable at {url}: {exc!r}") from exc
        if not response.is_success:
            raise MarketError(
                f"{url} answered {response.status_code}: {response.text[:500]}",
                response.status_code,
                _error_code(response),
            )
        return response

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = await self._send("POST", f"{self.market_url}{path}", payload)
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    async def register(self, envelope: dict[str, Any]) -> dict[str, Any]:
        """Post a signed registration (`provider_agent.registration.signed_registration`)."""
        return await self._post("/providers/register", envelope)

    async def heartbeat(self) -> dict[str, Any]:
        """Post a signed heartbeat; `issued_at` rises strictly over the last one the market
        took, even if the clock does not. One it refused does not count: after a clock that
        ran ahead is set right, the next heartbeat is taken again at once."""
        issued_at = max(self._clock_ms(), self._last_heartbeat_ms + 1)
        envelope = heartbeat_envelope(self.identity, self.domain, issued_at)
        body = await self._post("/providers/heartbeat", envelope)
        self._last_heartbeat_ms = issued_at
        return body

    async def post_attestation(self, envelope: Signed[Attestation]) -> dict[str, Any]:
        """Post one signed attestation (a duplicate of a stored one is accepted too)."""
        return await self._post("/providers/attestations", envelope.model_dump(mode="json"))

    async def latest_attestation(self) -> dict[str, Any] | None:
        """The market's last stored attestation of this provider (`GET /providers/{address}`'s
        `latest_attestation`: `seq`, `digest`, `window_end_ms`, ...), `None` if it holds none."""
        url = f"{self.market_url}/providers/{self.identity.address}"
        response = await self._send("GET", url)
        try:
            latest = response.json()["latest_attestation"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MarketError(f"{url} did not give the latest attestation: {exc!r}") from exc
        if latest is not None and not isinstance(latest, dict):
            raise MarketError(f"{url} gave an unreadable latest attestation: {latest!r}")
        return latest

    async def receipt_states(self, envelopes: list[Signed[Receipt]]) -> list[dict[str, Any]]:
        """The market's answer for each receipt, in order: `{"job_id", "state", "final",
        "detail"}` (`market/providers/receipts.py`)."""
        payload = {"receipts": [envelope.model_dump(mode="json") for envelope in envelopes]}
        body = await self._post("/providers/receipts/status", payload)
        answers = body.get("receipts")
        if (
            not isinstance(answers, list)
            or len(answers) != len(envelopes)
            or not all(isinstance(answer, dict) for answer in answers)
        ):
            raise MarketError(f"the market's receipt answer does not match the request: {body}")
        return answers

    async def aclose(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._own_http:
            await self._http.aclose()
