"""Who may read the agent's own state (`GET /agent/status`, `GET /metrics`).

They are served on the job address, which the market must reach and so often the internet
too; they show what the rig serves, earns and burns. With `listen.status_token` set, each
read must carry `Authorization: Bearer <token>` (Prometheus: `authorization: {credentials:
...}` in the scrape config), compared in constant time; without it they are open, as on a
job address bound to localhost or behind a firewall.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Endpoint = Callable[[Request], Awaitable[Response]]
UNAUTHORIZED = {
    "error": {
        "code": "unauthorized",
        "message": "this read needs `Authorization: Bearer <token>` with the agent's"
        " listen.status_token",
    }
}


def bearer_header(token: SecretStr | None) -> dict[str, str]:
    """The header that authorises a read (none without a token)."""
    return {} if token is None else {"authorization": f"Bearer {token.get_secret_value()}"}


def guarded(endpoint: Endpoint, token: SecretStr | None) -> Endpoint:
    """`endpoint`, answering 401 to a request without the token when one is set."""
    if token is None:
        return endpoint
    expected = bearer_header(token)["authorization"].encode()

    async def guarded_endpoint(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse(
                UNAUTHORIZED, status_code=401, headers={"www-authenticate": "Bearer"}
            )
        return await endpoint(request)

    return guarded_endpoint
