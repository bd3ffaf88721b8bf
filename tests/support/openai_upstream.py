"""A tiny OpenAI-compatible HTTP server standing in for vLLM in unit tests and benchmarks.

`POST /v1/chat/completions` and `/v1/completions` answer deterministically: completion
token `i` has id `1000 + i` and text `"t{i} "`; `usage` counts the prompt as one token
per 4 bytes of its text (at least 1). It honours `max_tokens`, `stream`,
`stream_options.include_usage` and `return_token_ids` the way vLLM 0.32 spells them.
`POST /_control` changes behaviour at run time (JSON, every field optional):
`completion_tokens` (default 8), `delay_ms` between chunks (a paced stream stops when its
client goes away, as vLLM aborts the request), `status` (answer every
request with this HTTP status, with `error_body` as its JSON body if given),
`die_after_chunks` (drop the connection after that many stream chunks), `stream_chunks`
(a list of strings: answer every streamed request with exactly these as its body, each its
own HTTP chunk, with no `[DONE]` added), `stall_ms` (a stream waits this long, or until
its client goes away, before its first token: after its headers and a chat stream's role
chunk, or before its headers with `stall_headers: true`; a request not streamed waits before
its answer; an engine that hangs), `times` (the
settings hold for that many completion requests, then the defaults return; unset, until the
next control). `GET /_last` returns the last request body, `GET /health` answers 200,
`GET /v1/models` lists the served model (`--served-model`, default `tiny-llama`) with its
`max_model_len` as vLLM does (`--max-model-len`, default 2048; `none`: not reported), and
`GET /metrics` exports vLLM's token counters and request gauges for it (prompt and
completion tokens of every answered request, requests in progress, 0 waiting). As vLLM
0.32 does, a completion request whose `max_tokens` (or `max_completion_tokens`) exceeds
`max_model_len` is refused with 400 ("max_tokens=N cannot be greater than max_model_len=M").

Run it: `python -m tests.support.openai_upstream --port 8001`; in tests, `start_upstream()`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx

from market.demo.ports import free_port
from tests.support.processes import ServerProcess

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

REPO = Path(__file__).resolve().parents[2]
MAX_MODEL_LEN = 2048
"""The fake engine's default context (the CPU vLLM of tests/engine serves 2048 too)."""
DEFAULTS: dict[str, Any] = {
    "completion_tokens": 8,
    "delay_ms": 0,
    "status": None,
    "error_body": None,
    "die_after_chunks": None,
    "stream_chunks": None,
    "stall_ms": None,
    "stall_headers": False,
    "times": None,
}


class UpstreamDiedError(Exception):
    """Raised inside the server to drop a streaming connection on purpose."""


class FakeEngine:
    """The ASGI app: deterministic completions, controllable failures."""

    def __init__(
        self, served_model: str = "tiny-llama", max_model_len: int | None = MAX_MODEL_LEN
    ) -> None:
        """Start with the default behaviour."""
        self.settings: dict[str, Any] = dict(DEFAULTS)
        self.last_body: dict[str, Any] | None = None
        self.served_model = served_model
        self.max_model_len = max_model_len
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.running = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one HTTP request."""
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if path == "/health":
            await _json(send, 200, {})
        elif path == "/_last":
            await _json(send, 200, self.last_body)
        elif path == "/_control" and method == "POST":
            self.settings = {**DEFAULTS, **json.loads(body or b"{}")}
            await _json(send, 200, self.settings)
        elif path == "/v1/models":
            model: dict[str, Any] = {"id": self.served_model, "object": "model"}
            if self.max_model_len is not None:
                model["max_model_len"] = self.max_model_len
            await _json(send, 200, {"object": "list", "data": [model]})
        elif path == "/metrics":
            await self._metrics(send)
        elif path in ("/v1/chat/completions", "/v1/completions") and method == "POST":
            self.running += 1
            try:
                chat = path.endswith("chat/completions")
                await self._complete(chat, json.loads(body), receive, send)
            finally:
                self.running -= 1
        else:
            await _json(send, 404, {"error": {"message": "not found"}})

    async def _metrics(self, send: Send) -> None:
        labels = f'{{engine="0",model_name="{self.served_model}"}}'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{labels} {float(self.running)}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{labels} 0.0",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{labels} {float(self.prompt_tokens)}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{labels} {float(self.generation_tokens)}",
        ]
        body = ("\n".join(lines) + "\n").encode()
        headers = [(b"content-type", b"text/plain; version=0.0.4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _settings_for_one(self) -> dict[str, Any]:
        """The settings this completion request is served with (counting down `times`)."""
        settings = self.settings
        times = settings["times"]
        if times is not None:
            self.settings = dict(DEFAULTS) if times <= 1 else {**settings, "times": times - 1}
        return settings

    async def _complete(
        self, chat: bool, request: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        self.last_body = request
        settings = self._settings_for_one()
        status = settings["status"]
        if status is not None:
            error = settings["error_body"] or {"error": {"message": f"forced {status}"}}
            await _json(send, int(status), error)
            return
        limit = request.get("max_tokens") or request.get("max_completion_tokens") or 16
        if self.max_model_len is not None and int(limit) > self.max_model_len:
            await _json(send, 400, _too_long(int(limit), self.max_model_len))
            return
        count = min(int(settings["completion_tokens"]), int(limit))
        prompt = json.dumps(request.get("messages") if chat else request.get("prompt"))
        usage = {
            "prompt_tokens": max(1, len(prompt) // 4),
            "completion_tokens": count,
            "total_tokens": max(1, len(prompt) // 4) + count,
        }
        finish = "length" if count == limit else "stop"
        self.prompt_tokens += usage["prompt_tokens"]
        self.generation_tokens += count
        ids = request.get("return_token_ids") is True
        if request.get("stream"):
            events = self._stream_events(chat, request, count, finish, usage, ids)
            await _stream(events, receive, send, settings, first_token=1 if chat else 0)
            return
        if settings["stall_ms"] is not None and await _stall(receive, settings):
            return
        text = "".join(f"t{i} " for i in range(count))
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if ids:
            choice["token_ids"] = [1000 + i for i in range(count)]
        kind = "chat.completion" if chat else "text_completion"
        await _json(send, 200, _envelope(kind, request, [choice], usage))

    def _stream_events(
        self,
        chat: bool,
        request: dict[str, Any],
        count: int,
        finish: str,
        usage: dict[str, int],
        ids: bool,
    ) -> Iterator[bytes]:
        """The body's chunks, each one event, encoded as they are sent."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        events: list[dict[str, Any]] = []
        if chat:
            events.append(_envelope(kind, request, [_delta(chat, "", None, None)], None))
        for i in range(count):
            done = finish if i == count - 1 else None
            token = [1000 + i] if ids else None
            events.append(_envelope(kind, request, [_delta(chat, f"t{i} ", token, done)], None))
        options = request.get("stream_options") or {}
        if options.get("include_usage"):
            events.append(_envelope(kind, request, [], usage))
        for event in events:
            yield b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _too_long(max_tokens: int, max_model_len: int) -> dict[str, Any]:
    """vLLM 0.32's refusal of a completion limit past the context (`VLLMValidationError`)."""
    message = (
        f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. "
        "Please request fewer output tokens."
    )
    return {
        "error": {"message": message, "type": "BadRequestError", "param": "max_tokens", "code": 400}
    }


async def _stall(receive: Receive, settings: dict[str, Any]) -> bool:
    """Waits `stall_ms`, or until the client goes away (as vLLM aborts a request then):
    whether it went away."""
    return await _left_within(receive, int(settings["stall_ms"]) / 1000)


async def _left_within(receive: Receive, seconds: float) -> bool:
    """Waits `seconds`, or until the client goes away: whether it went away."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(gone(), seconds)
    except TimeoutError:
        return False
    return True


async def _stream(
    events: Iterator[bytes],
    receive: Receive,
    send: Send,
    settings: dict[str, Any],
    first_token: int,
) -> None:
    """Sends `events` (lazy; not read when the `stream_chunks` control replaces them); the
    one at index `first_token` carries the first token."""
    stall = settings["stall_ms"] is not None
    if stall and settings["stall_headers"] and await _stall(receive, settings):
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    die_after = settings["die_after_chunks"]
    delay = int(settings["delay_ms"]) / 1000
    raw = settings["stream_chunks"]
    chunks: Iterable[bytes] = events if raw is None else [str(c).encode() for c in raw]
    for sent, chunk in enumerate(chunks):
        stalls_here = stall and not settings["stall_headers"] and sent == first_token
        if stalls_here and await _stall(receive, settings):
            return
        if die_after is not None and sent >= int(die_after):
            raise UpstreamDiedError("told to die mid-stream")
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if delay and await _left_within(receive, delay):
            return  # the client went away: stop generating, as vLLM aborts the request
    last = b"data: [DONE]\n\n" if raw is None else b""
    await send({"type": "http.response.body", "body": last})


def _delta(chat: bool, text: str, token_ids: list[int] | None, finish: str | None) -> Any:
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
    if chat:
        choice["delta"] = {"role": "assistant", "content": text} if not text else {"content": text}
    else:
        choice["text"] = text
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return choice


def _envelope(
    kind: str, request: dict[str, Any], choices: list[Any], usage: dict[str, int] | None
) -> dict[str, Any]:
    return {
        "id": "cmpl-fake",
        "object": kind,
        "created": 1767225600,
        "model": request.get("model"),
        "choices": choices,
        "usage": usage,
    }


async def _json(send: Send, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class UpstreamProcess(ServerProcess):
    """A running fake engine subprocess; `url` is its OpenAI base URL (ends in /v1)."""

    @property
    def url(self) -> str:
        """Base URL as an OpenAI client would take it."""
        return f"http://127.0.0.1:{self.port}/v1"

    def control(self, **settings: Any) -> None:
        """Set behaviour (unnamed settings return to their defaults)."""
        httpx.post(f"http://127.0.0.1:{self.port}/_control", json=settings).raise_for_status()

    def last_body(self) -> Any:
        """The body of the last completion request the server received."""
        return httpx.get(f"http://127.0.0.1:{self.port}/_last").json()

    def running(self) -> float:
        """The requests in progress (`vllm:num_requests_running`)."""
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics").text
        (line,) = (x for x in text.splitlines() if x.startswith("vllm:num_requests_running{"))
        return float(line.rsplit(" ", 1)[1])


def start_upstream(
    timeout_s: float = 20.0, max_model_len: int | None = MAX_MODEL_LEN, port: int | None = None
) -> UpstreamProcess:
    """Start the fake engine as a subprocess on a loopback port (a free one unless given);
    wait for /health. `max_model_len`: the context it reports and enforces (None: neither)."""
    port = free_port() if port is None else port
    command = [sys.executable, "-m", "tests.support.openai_upstream", "--port", str(port)]
    command += ["--max-model-len", "none" if max_model_len is None else str(max_model_len)]
    process = subprocess.Popen(command, cwd=REPO)
    upstream = UpstreamProcess(process, port)
    health = f"http://127.0.0.1:{port}/health"
    upstream.wait_until_up(
        health, timeout_s, name="fake engine", up=lambda status: status == 200, retry_s=0.05
    )
    return upstream


def main() -> None:
    """Serve the fake engine with uvicorn on loopback."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model", default="tiny-llama")
    parser.add_argument(
        "--max-model-len",
        type=lambda value: None if value == "none" else int(value),
        default=MAX_MODEL_LEN,
        help="the context reported and enforced; `none`: neither",
    )
    args = parser.parse_args()
    engine = FakeEngine(args.served_model, args.max_model_len)
    uvicorn.run(engine, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
