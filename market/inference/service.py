"""The request path: route, hold, ticket, relay, verify, charge (or release), answer.

Each provider tried gets its own job (new id, hold, ticket). A provider that fails before
answering (unreachable, 5xx, at capacity (429), refused the ticket, or a stream that failed
before its first output token or sent none within `first_token_timeout_s` of the job being
sent) is replaced by the next fallback, its hold released; when
every provider tried was at capacity the buyer gets 503 `providers_at_capacity` with
`Retry-After`. A stream's answer starts (its status and headers go to the buyer) with the
events up to its first token, so a stream that fails before then is an HTTP error, not a 200.
Once an answer has started, a failure is the buyer's error and the hold is released, except
that an interrupted receipt (the stream broke off after tokens reached the buyer) is charged
for exactly those tokens.

A buyer who closes the connection before the answer starts (a stream's first token, or the
whole answer of a request not streamed) ends the wait on the provider: the job fails at no
cost, and closing the request to the agent makes it close the engine's, so no GPU time is
spent for nobody. Only the waits on agents are cut short (`protocol.disconnect`); a database
transaction under way finishes.

Before each hold the API key's budgets are checked for that offer (`market.buyers.budgets`):
402 `budget_exceeded` when the money, energy or carbon budget would be exceeded; a key with
an energy or carbon budget skips offers whose energy cannot be estimated (no published
J/token), and gets 503 `no_provider_available` when no measured offer is left.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Literal

import aiohttp
from fastapi.responses import Response
from starlette.types import Receive

from market.buyers import budgets
from market.errors import MarketError
from market.inference.agents import AgentFailure, job_endpoint, send_job
from market.inference.attempt import Attempt, KeyContext, authenticate_buyer, offer_site
from market.inference.errors import (
    BuyerLeftError,
    ModelNotFoundError,
    NoProviderAvailableError,
    ProviderFailedError,
    ProvidersAtCapacityError,
    UpstreamRejectedError,
)
from market.inference.request_id import JOB_ID_HEADER
from market.inference.schemas import CompletionRequestBase
from market.inference.stream import RelayResponse, StreamRelay
from market.jobs.errors import ReceiptRejectedError, RejectReason
from market.jobs.service import JobOrder, cost
from market.routing.errors import CompletionLimitTooLargeError
from market.routing.schemas import ProviderPreferences
from market.routing.service import RouteRequest, choose
from market.routing.table import LiveOffer
from market.runtime import Runtime
from protocol.disconnect import ClientGone, Departure
from protocol.messages import new_job_id, request_digest

Route = Literal["chat/completions", "completions"]
_ID_FIELDS = ("token_ids", "prompt_token_ids")
#: Buyer-identifying fields that never reach a provider (docs/protocol.md, request digest).
_PRIVATE_FIELDS = ("user", "safety_identifier", "prompt_cache_key")
BUYER_LEFT = "the buyer left before the provider answered"


def forwarded_body(request: CompletionRequestBase) -> bytes:
    """The exact bytes sent to the agent (and covered by the ticket's request digest)."""
    body = request.engine_body()
    for name in _PRIVATE_FIELDS:
        body.pop(name, None)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def list_models(runtime: Runtime) -> dict[str, Any]:
    """`GET /v1/models`: every model on offer, with its price range and provider count."""
    data = [_model(model, runtime.routing.offers(model)) for model in runtime.routing.models()]
    return {"object": "list", "data": data}


def get_model(runtime: Runtime, model: str) -> dict[str, Any]:
    """`GET /v1/models/{model}`: one model as `list_models` shows it (404 if none offers it)."""
    offers = runtime.routing.offers(model)
    if not offers:
        raise ModelNotFoundError(f"The model `{model}` does not exist on the market.")
    return _model(model, offers)


def _model(model: str, offers: list[LiveOffer]) -> dict[str, Any]:
    """One model as `/v1/models` shows it. `context_length`: the longest context any live
    provider reports serving (as OpenRouter's models list has it); the `market` extension
    has the range over the providers that report one. Both null when none reports one."""
    prices_in = [o.price_in_per_mtok for o in offers]
    prices_out = [o.price_out_per_mtok for o in offers]
    contexts = [o.context_length for o in offers if o.context_length is not None]
    context_range = {"min": min(contexts), "max": max(contexts)} if contexts else None
    return {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": "joule-market",
        "context_length": max(contexts) if contexts else None,
        "market": {
            "providers": len(offers),
            "price_in_per_mtok": {"min": min(prices_in), "max": max(prices_in)},
            "price_out_per_mtok": {"min": min(prices_out), "max": max(prices_out)},
            "context_length": context_range,
            "energy": model_energy(offers),
        },
    }


def _jpt(offer: LiveOffer) -> dict[str, Any]:
    return {
        "provider": offer.provider,
        "joules_per_token": offer.joules_per_token,
        "avg_concurrency": offer.energy_concurrency,
        "tokens_per_s": offer.tokens_per_s,
    }


def model_energy(offers: list[LiveOffer]) -> dict[str, Any]:
    """The `/v1/models` energy extension of one model: best and median GPU J per output
    token over providers with measured steady windows (the median is the lower median
    provider's figure, with the concurrency each was measured at), and how many providers
    are measured and unmeasured."""
    measured = sorted(
        (o for o in offers if o.joules_per_token is not None),
        key=lambda o: o.joules_per_token or 0.0,
    )
    best = median = None
    if measured:
        best = _jpt(measured[0])
        median = _jpt(measured[(len(measured) - 1) // 2])
    return {
        "providers_measured": len(measured),
        "providers_unmeasured": len(offers) - len(measured),
        "best_joules_per_token": best,
        "median_joules_per_token": median,
    }


async def complete(
    runtime: Runtime,
    raw_key: str,
    request: CompletionRequestBase,
    route: Route,
    receive: Receive,
) -> Response:
    """Serves one completion request end to end, watching the buyer's connection
    (`receive`, the body already read); raises `MarketError`s for the buyer, which name the
    last job opened for it (`MarketError.job_id`), if any."""
    opened: list[str] = []
    try:
        async with Departure(receive) as departure:
            return await _complete(runtime, raw_key, request, route, opened, departure)
    except ClientGone:
        raise BuyerLeftError(BUYER_LEFT) from None
    except MarketError as exc:
        if opened and exc.job_id is None:
            exc.job_id = opened[-1]
        raise


async def _complete(
    runtime: Runtime,
    raw_key: str,
    request: CompletionRequestBase,
    route: Route,
    opened: list[str],
    departure: Departure,
) -> Response:
    too_large: CompletionLimitTooLargeError | None = None
    try:
        offers = choose(runtime.routing, _route_request(request, request.provider))
    except CompletionLimitTooLargeError as exc:
        offers, too_large = [], exc
    if not offers:
        await authenticate_buyer(runtime, raw_key)  # an unknown key is a 401 before all else
        if too_large is not None:
            raise too_large
        if not runtime.routing.offers(request.model):
            raise ModelNotFoundError(f"The model `{request.model}` does not exist on the market.")
        raise NoProviderAvailableError(
            f"No provider of `{request.model}` that meets your preferences is available now."
        )
    body = forwarded_body(request)
    digest = request_digest(body)
    prompt_bound = request.prompt_bound(runtime.settings.media_part_token_bound)
    limit = request.completion_limit
    key: KeyContext | None = None
    failures: list[str] = []
    busy = routed_out = 0
    queue, measured_only = list(offers), False
    loop = asyncio.get_running_loop()
    first_token_s = runtime.settings.first_token_timeout_s
    stalled = f"no first token within {first_token_s:g} s"
    while queue:
        offer = queue.pop(0)
        worst = budgets.estimate(limit, offer.joules_per_token, offer_site(offer))
        header = None
        if key is None or not key.energy_budgeted or worst.wall_mwh is not None:
            order = _order(runtime, request, offer, prompt_bound, limit)
            attempt = Attempt(runtime, offer, order, digest, worst)
            header = await attempt.open(raw_key, key)
            key = attempt.key
        if header is None:  # routed out: its energy cannot be held to the key's budget
            routed_out += 1
            if not measured_only and key is not None and key.energy_budgeted:
                measured_only = True  # choose again among measured offers only
                queue = [o for o in _measured(runtime, request) if o is not offer]
            continue
        opened.append(attempt.order.job_id)
        # A stream's first token is awaited for at most `first_token_timeout_s` from here; an
        # answer not streamed has only the agent client's read timeout.
        deadline = loop.time() + first_token_s if request.stream else None
        try:
            async with departure.cancellable(), asyncio.timeout_at(deadline):
                response = await send_job(
                    runtime.agents, job_endpoint(offer.job_url, route), body, header
                )
        except ClientGone:
            await attempt.close(BUYER_LEFT)
            raise
        except TimeoutError:  # the deadline's: send_job turns aiohttp's into AgentFailure
            await attempt.close(stalled)
            failures.append(f"{offer.provider}: {stalled}")
            continue
        except AgentFailure as exc:
            await attempt.close(exc.message)
            if not exc.retryable:
                raise UpstreamRejectedError(
                    exc.message, status_code=exc.status, engine=exc.engine
                ) from exc
            failures.append(f"{offer.provider}: {exc.message}")
            if exc.at_capacity:
                busy += 1
            continue
        except BaseException:
            await attempt.close("request cancelled before the provider answered")
            raise
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            relay = StreamRelay(response, attempt, include_usage)
            try:
                async with departure.cancellable(), asyncio.timeout_at(deadline):
                    failure = await relay.first_token()
            except ClientGone:
                await relay.close(BUYER_LEFT)
                raise
            except TimeoutError:  # the deadline's: first_token reports aiohttp's as a failure
                failure = stalled
            except BaseException:
                await relay.close("request cancelled before the provider's first token")
                raise
            if failure is None:
                return RelayResponse(relay)
            await relay.close(failure)
            if relay.rejected is not None:
                raise relay.rejected
            failures.append(f"{offer.provider}: {failure}")
            continue
        try:
            return await _answer_json(response, attempt, departure)
        except ClientGone:
            await attempt.close(BUYER_LEFT)
            raise
        finally:
            await attempt.close()
    if not failures:
        raise NoProviderAvailableError(
            f"This API key has an energy or carbon budget, so only offers with measured "
            f"energy (a published J/token, and a grid intensity for a carbon budget) can serve "
            f"it; none of the {routed_out} available for `{request.model}` is."
        )
    if busy == len(failures):
        raise ProvidersAtCapacityError(
            "Every provider of this model is serving its maximum of concurrent requests; "
            "retry shortly."
        )
    raise ProviderFailedError("No provider could serve the request: " + "; ".join(failures))


def _measured(runtime: Runtime, request: CompletionRequestBase) -> list[LiveOffer]:
    """The routing choice among offers with a published J/token (a key with an energy or
    carbon budget can only be held to it on those)."""
    prefs = request.provider
    bound = math.inf if prefs.max_joules_per_token is None else prefs.max_joules_per_token
    measured = prefs.model_copy(update={"max_joules_per_token": bound})
    return choose(runtime.routing, _route_request(request, measured))


def _route_request(request: CompletionRequestBase, prefs: ProviderPreferences) -> RouteRequest:
    param, limit = request.explicit_limit
    return RouteRequest(request.model, prefs, completion_tokens=limit, completion_param=param)


def _order(
    runtime: Runtime,
    request: CompletionRequestBase,
    offer: LiveOffer,
    prompt_bound: int,
    limit: int,
) -> JobOrder:
    hold = cost(prompt_bound, limit, offer.price_in_per_mtok, offer.price_out_per_mtok)
    return JobOrder(
        job_id=new_job_id(),
        buyer="",
        provider=offer.provider,
        model=request.model,
        stream=request.stream,
        price_in=offer.price_in_per_mtok,
        price_out=offer.price_out_per_mtok,
        hold=max(hold, 1),  # a hold is positive; a free offer holds one base unit
        max_tokens=limit,
        prompt_bound=prompt_bound,
        process_id=runtime.process_id,
    )


async def _answer_json(
    response: aiohttp.ClientResponse, attempt: Attempt, departure: Departure
) -> Response:
    """Reads the agent's JSON answer, charges its receipt, returns OpenAI's body + extensions.
    A buyer who leaves while the answer is read is not charged; once it is read, the receipt
    is settled whatever the buyer does."""
    async with departure.cancellable():
        try:
            raw = await response.read()
        except Exception as exc:
            raise ProviderFailedError(f"the provider's answer broke off: {exc!r}") from exc
        finally:
            response.release()
    try:
        payload = json.loads(raw)
        envelope = payload.pop("receipt")
        choices = payload.get("choices") or []
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        error = ReceiptRejectedError("the provider's answer has no receipt", RejectReason.MISSING)
        await attempt.reject(error, None)
        raise error from exc
    token_ids: list[int] | None = None
    for choice in choices:
        ids = choice.pop("token_ids", None)
        choice.pop("prompt_token_ids", None)
        if isinstance(ids, list):
            token_ids = [*(token_ids or []), *ids]
    payload.pop("prompt_token_ids", None)
    text = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
    usage = payload.get("usage")
    settled = await attempt.settle(text, usage, token_ids)
    usage.update(settled.usage_extension())  # settle() refused anything but an object
    payload["energy"] = settled.energy
    payload["provider"] = attempt.provider_block()
    content = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {JOB_ID_HEADER: attempt.order.job_id}
    return Response(content, media_type="application/json", headers=headers)
