"""`DirectBodyRoute` answers every request as FastAPI's own route did: same status, same
OpenAI envelope, same parsed body, in the same order of checks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient

from market.app import create_app
from market.config import Settings
from market.inference.direct_route import DirectBodyRoute
from market.inference.endpoints import KeyDep, RuntimeDep, router
from market.inference.limits import MAX_BODY_BYTES, LimitedBodyRoute
from market.inference.schemas import ChatCompletionRequest, CompletionRequest

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _app(route_class: type[LimitedBodyRoute]) -> FastAPI:
    """The market's app (its error handlers) with two echoing routes of the given class."""
    router = APIRouter(prefix="/echo", route_class=route_class)

    @router.post("/chat", response_model=None)
    async def chat(
        body: ChatCompletionRequest, key: KeyDep, runtime: RuntimeDep, request: Request
    ) -> Response:
        return _echo(body, key, runtime, request)

    @router.post("/completions", response_model=None)
    async def completions(
        body: CompletionRequest, key: KeyDep, runtime: RuntimeDep, request: Request
    ) -> Response:
        return _echo(body, key, runtime, request)

    app = create_app(Settings(database_url="sqlite://"), runtime=None)
    app.include_router(router)
    app.state.runtime = "the runtime"
    return app


def _echo(
    body: ChatCompletionRequest | CompletionRequest, key: str, runtime: Any, request: Request
) -> Response:
    content = {"type": type(body).__name__, "body": body.engine_body(), "key": key}
    content["path"] = request.url.path
    return JSONResponse({**content, "runtime": runtime, "bound": body.prompt_bound()})


FASTAPI, DIRECT = TestClient(_app(LimitedBodyRoute)), TestClient(_app(DirectBodyRoute))
JSON = {"content-type": "application/json"}
AUTH = {"authorization": "Bearer sk-jm-1"}
JSON_AUTH = {**JSON, **AUTH}

CASES: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("valid", "chat", json.dumps(CHAT).encode(), JSON_AUTH),
    (
        "extras kept",
        "chat",
        json.dumps({**CHAT, "temperature": 0.5, "seed": 7}).encode(),
        JSON_AUTH,
    ),
    ("completions", "completions", b'{"model": "m", "prompt": "once"}', JSON_AUTH),
    (
        "charset",
        "chat",
        json.dumps(CHAT).encode(),
        {"content-type": "application/json; charset=utf-8", **AUTH},
    ),
    ("+json", "chat", json.dumps(CHAT).encode(), {"content-type": "application/x+json", **AUTH}),
    ("no key", "chat", json.dumps(CHAT).encode(), JSON),
    ("basic auth", "chat", json.dumps(CHAT).encode(), {**JSON, "authorization": "Basic abc"}),
    ("empty body", "chat", b"", JSON_AUTH),
    ("empty body, no key", "chat", b"", JSON),
    ("not JSON", "chat", b'{"model": ', JSON_AUTH),
    ("not JSON, no key", "chat", b"{nope}", JSON),
    ("not UTF-8", "chat", b'{"model": "\xff"}', JSON_AUTH),
    ("bad field", "chat", json.dumps({**CHAT, "max_tokens": 0}).encode(), JSON_AUTH),
    ("bad field, no key", "chat", json.dumps({**CHAT, "max_tokens": 0}).encode(), JSON),
    ("float for int", "chat", json.dumps({**CHAT, "max_tokens": 8.0}).encode(), JSON_AUTH),
    ("string for bool", "chat", json.dumps({**CHAT, "stream": "true"}).encode(), JSON_AUTH),
    ("nested", "chat", json.dumps({**CHAT, "provider": {"sortt": "x"}}).encode(), JSON_AUTH),
    (
        "reserved",
        "chat",
        json.dumps({**CHAT, "logit_bias": None, "stop": "x"}).encode(),
        JSON_AUTH,
    ),
    (
        "nulls",
        "chat",
        json.dumps(
            {**CHAT, "stream": None, "n": None, "max_tokens": None, "provider": None}
        ).encode(),
        JSON_AUTH,
    ),
    (
        "nested nulls",
        "completions",
        b'{"model": "m", "prompt": "a", "stream_options": {"include_usage": null}, '
        b'"provider": {"allow_fallbacks": null}, "temperature": null}',
        JSON_AUTH,
    ),
    ("null model", "chat", json.dumps({**CHAT, "model": None}).encode(), JSON_AUTH),
    ("missing", "chat", b'{"model": "m"}', JSON_AUTH),
    ("array", "chat", b"[1, 2]", JSON_AUTH),
    ("string", "chat", b'"text"', JSON_AUTH),
    ("text/plain", "chat", json.dumps(CHAT).encode(), {"content-type": "text/plain", **AUTH}),
    ("no content type", "chat", json.dumps(CHAT).encode(), AUTH),
]


@pytest.mark.parametrize(
    ("route", "body", "headers"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_answers_as_fastapi_does(route: str, body: bytes, headers: dict[str, str]) -> None:
    before = FASTAPI.post(f"/echo/{route}", content=body, headers=headers)
    after = DIRECT.post(f"/echo/{route}", content=body, headers=headers)
    assert (after.status_code, after.json()) == (before.status_code, before.json())


def test_the_valid_cases_reach_the_endpoint_with_body_key_runtime_and_request() -> None:
    answer = DIRECT.post("/echo/chat", content=json.dumps(CHAT), headers=JSON_AUTH).json()
    assert answer["type"] == "ChatCompletionRequest"
    assert answer["body"]["messages"] == CHAT["messages"]
    assert (answer["key"], answer["runtime"]) == ("sk-jm-1", "the runtime")
    assert answer["path"] == "/echo/chat"


def test_the_size_cap_still_applies() -> None:
    big = b'{"model": "' + b"x" * MAX_BODY_BYTES + b'"}'
    answer = DIRECT.post("/echo/chat", content=big, headers=JSON_AUTH)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"


def test_a_route_of_another_shape_is_refused_when_built() -> None:
    router = APIRouter(route_class=DirectBodyRoute)
    with pytest.raises(AssertionError, match="takes"):

        @router.post("/other")
        async def other(payload: CompletionRequest, key: KeyDep) -> None: ...


def test_the_market_serves_its_completion_routes_with_it() -> None:
    classes = {getattr(r, "path", ""): type(r) for r in router.routes}
    assert classes["/v1/chat/completions"] is DirectBodyRoute
    assert classes["/v1/completions"] is DirectBodyRoute
