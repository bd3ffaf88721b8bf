"""A body nested tens of thousands of levels deep is refused with 400; it used to overflow the
C stack in the JSON decoder and kill the market process (`protocol.recursion`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Run in a child process: without the guard the child dies of a segmentation fault, which
# must fail this test rather than end the test session.
_CHILD = textwrap.dedent(
    """
    import sys
    from fastapi.testclient import TestClient
    from market.app import create_app

    client = TestClient(create_app())  # no lifespan: the body is refused before anything else
    depth = 70_000
    nested = "[" * depth + "]" * depth
    body = '{"model":"m","messages":[{"role":"user","content":"x","deep":' + nested + "}]}"
    headers = {"content-type": "application/json"}
    chat = client.post("/v1/chat/completions", content=body, headers=headers)
    print(chat.status_code, chat.json()["error"]["type"])
    keys = client.post("/buyers/0x" + "11" * 20 + "/api-keys", content=nested, headers=headers)
    print(keys.status_code, sys.getrecursionlimit())
    """
)


def test_a_deeply_nested_body_is_refused_not_fatal() -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, check=False
    )
    assert child.returncode == 0, child.stderr[-2000:]
    chat, keys = child.stdout.split("\n")[:2]
    assert chat == "400 invalid_request_error"
    status, limit = keys.split()
    assert status in {"400", "422"}
    assert int(limit) == 1024 * 12
