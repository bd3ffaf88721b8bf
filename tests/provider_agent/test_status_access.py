"""`listen.status_token`: the agent's status and metrics answer only the token's holder."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.testclient import TestClient

from provider_agent.config import ListenSettings
from provider_agent.status_access import bearer_header, guarded

TOKEN = SecretStr("a-token-of-16-chars-or-more")


async def state(_: Request) -> Response:
    return PlainTextResponse("the rig's state")


def _client(token: SecretStr | None) -> TestClient:
    app = Starlette()
    app.add_route("/agent/status", guarded(state, token), methods=["GET"])
    return TestClient(app)


def test_without_a_token_anyone_reads() -> None:
    assert guarded(state, None) is state
    assert _client(None).get("/agent/status").text == "the rig's state"
    assert bearer_header(None) == {}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN.get_secret_value()}"},
        {"authorization": f"Bearer {TOKEN.get_secret_value()}x"},
        {"authorization": TOKEN.get_secret_value()},
    ],
)
def test_a_read_without_the_token_is_401(headers: dict[str, str]) -> None:
    response = _client(TOKEN).get("/agent/status", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"
    assert TOKEN.get_secret_value() not in response.text


def test_the_token_reads() -> None:
    response = _client(TOKEN).get("/agent/status", headers=bearer_header(TOKEN))
    assert response.status_code == 200
    assert response.text == "the rig's state"


def test_a_short_token_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="status_token"):
        ListenSettings(status_token="short")
