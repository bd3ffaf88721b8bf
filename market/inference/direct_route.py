"""The route class of `/v1/chat/completions` and `/v1/completions`: it hands the endpoint its
body, key and runtime itself instead of through FastAPI's dependency solver.

Per request, FastAPI walks the endpoint's dependency tree (`solve_dependencies`), decodes
the body with `json.loads` and validates the result with `validate_python`: about 120 µs of
CPU of the market's ~3 ms per plain request (benchmarks/README.md). Both POST routes take
the same four things (the body model, the bearer key, the app's runtime, the request), so
this route builds them itself. A JSON body is parsed and validated in one pass
(`model_validate_json`). Any other request (a body that fails the model, is not JSON, is
empty or has another content type) goes FastAPI's own way (`json.loads`, then
`request_body_to_args`), so it gets the same answer, in the same order, as under FastAPI:

1. a JSON content type whose body is not JSON: 400 `JSON decode error`;
2. no usable `Authorization` header: 401;
3. a body that fails the model: 400 naming the first field at fault.

`tests/market/inference/test_direct_route.py` holds the two routes' answers side by side.
The OpenAPI schema still comes from the endpoint's signature.
"""

from __future__ import annotations

import email.message
import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request
from fastapi.dependencies.utils import request_body_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from market.inference.auth import bearer_key
from market.inference.limits import LimitedBodyRoute

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _json_content(content_type: str | None) -> bool:
    """Whether FastAPI would decode a body of this content type as JSON."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _validated(model: type[BaseModel], raw: bytes) -> BaseModel | None:
    """The JSON body as `model` in one pass, or None: FastAPI's own path then finds the same
    fault and words it."""
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        return None


def _decode(raw: bytes) -> Any:
    """The body as FastAPI decodes it: 400 `JSON decode error` at the position `json.loads`
    gives, or FastAPI's bare 400 for bytes that are not text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([error], body=exc.doc) from None
    except Exception:
        raise HTTPException(400, "There was an error parsing the body") from None


_PARAMETERS = ["body", "key", "runtime", "request"]


class DirectBodyRoute(LimitedBodyRoute):
    """A `LimitedBodyRoute` (413 over the size cap) whose endpoint, if it takes a body, is
    called as `endpoint(body=<its body model>, key=<bearer key>, runtime=<app's runtime>,
    request=<the request>)`; a route without a body is left to FastAPI."""

    def body_handler(self) -> Handler:
        if self.body_field is None:
            return super().body_handler()
        names = list(inspect.signature(self.endpoint).parameters)
        assert names == _PARAMETERS, f"{self.path}: takes {names}, not {_PARAMETERS}"
        model = self.body_field.field_info.annotation
        assert isinstance(model, type), model
        assert issubclass(model, BaseModel), model
        endpoint, fields, embed = self.endpoint, self.dependant.body_params, self._embed_body_fields

        async def direct(request: Request) -> Response:
            raw = await request.body()
            json_body = _json_content(request.headers.get("content-type"))
            body = _validated(model, raw) if raw and json_body else None
            if body is None:
                received = (_decode(raw) if json_body else raw) if raw else PydanticUndefined
                key = bearer_key(request.headers.get("authorization"))
                values, errors = await request_body_to_args(fields, received, embed)
                if errors:
                    raise RequestValidationError(errors, body=received)
                body = values["body"]
            else:
                key = bearer_key(request.headers.get("authorization"))
            runtime = request.app.state.runtime
            response: Response = await endpoint(
                body=body, key=key, runtime=runtime, request=request
            )
            return response

        return direct
