"""`GET /health`: whether the database, the broker and the chain answer."""

from __future__ import annotations

import time
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text

from market.runtime import Runtime, get_runtime
from protocol.keys import public_key_hex

router = APIRouter(tags=["health"])


def _check(fn: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = fn()
    except Exception as exc:  # every failure is reported, none is raised
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2), **detail}


def _database(runtime: Runtime) -> dict[str, Any]:
    with runtime.sessions() as session:
        session.execute(text("SELECT 1"))
    return {}


def _broker(runtime: Runtime) -> dict[str, Any]:
    url = runtime.settings.broker_url
    if runtime.settings.eager_tasks:
        return {"mode": "in-process"}
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return {"mode": "redis"}


def _chain(runtime: Runtime) -> dict[str, Any]:
    client = runtime.chain.client
    return {
        "chain_id": client.deployment.chain_id,
        "block": int(client.w3.eth.block_number),
        "settlement": client.deployment.settlement,
    }


@router.get("/health")
def health(runtime: Annotated[Runtime, Depends(get_runtime)]) -> JSONResponse:
    """200 when every dependency answers, 503 with the failing ones named otherwise."""
    checks = {
        "database": _check(lambda: _database(runtime)),
        "broker": _check(lambda: _broker(runtime)),
        "chain": _check(lambda: _chain(runtime)),
    }
    ok = all(check["ok"] for check in checks.values())
    return JSONResponse(status_code=200 if ok else 503, content={"ok": ok, "checks": checks})


@router.get("/market")
def market_info(runtime: Annotated[Runtime, Depends(get_runtime)]) -> dict[str, Any]:
    """What agents and buyers need to talk to this market: its domain, ticket key and terms."""
    deployment = runtime.chain.deployment
    return {
        "chain_id": deployment.chain_id,
        "settlement_contract": deployment.settlement,
        "payment_token": deployment.payment_token,
        "network_token": deployment.network_token,
        "ticket_public_key": public_key_hex(runtime.ticket_key),
        "protocol_fee_bps": runtime.settings.protocol_fee_bps,
        "min_provider_stake": str(runtime.settings.min_provider_stake),
        "confirmations": runtime.settings.confirmations,
        "epoch_seconds": runtime.settings.epoch_seconds,
    }
