"""Talking to provider agents: the signed job ticket header, one job request, and the
cancel of a stream whose buyer went away.

Failures are sorted where they enter: anything that means "this provider could not take the
job" (unreachable, 5xx, at capacity (429), refused our ticket) may be retried on another
provider; the engine refusing the request itself (`upstream_rejected`) is the buyer's answer.

Jobs go out over the runtime's `market.agent_client.AgentClient`. Every response handed out
must be released (`response.release()`): its connection goes back to the pool when its body
was read to the end, else it is closed.
"""

from __future__ import annotations

import base64
import json
import logging

import aiohttp

from market.agent_client import AgentClient
from market.inference.errors import PROVIDER_SIDE_STATUSES, EngineError, engine_error
from protocol.http_session import TRANSPORT_ERRORS
from protocol.messages import JobTicket, Signed

TICKET_HEADER = "X-Job-Ticket"
logger = logging.getLogger(__name__)


def ticket_header(envelope: Signed[JobTicket]) -> str:
    """base64url (no padding) of the envelope's JSON, as docs/agent-protocol.md fixes."""
    raw = envelope.model_dump_json().encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def job_endpoint(job_url: str, route: str) -> str:
    """`{job_url}/{route}`, where `job_url` is the agent's `.../jobs` base (added if absent)."""
    base = job_url.rstrip("/")
    if not base.endswith("/jobs"):
        base += "/jobs"
    return f"{base}/{route}"


class AgentFailure(Exception):
    """The agent did not accept or answer the job; `retryable` if another provider may."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int = 502,
        code: str | None = None,
        engine: EngineError | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.code = code
        self.engine = engine
        """The engine's own error, when the agent passed one on."""

    @property
    def at_capacity(self) -> bool:
        """The agent refused only because it is serving its `max_concurrency` (429)."""
        return self.status == 429


def _agent_error(raw: bytes) -> tuple[str | None, str, EngineError | None]:
    """The agent's error code and message, and the engine's error the message carries (the
    message then names it by its own message, not its JSON body)."""
    try:
        error = json.loads(raw)["error"]
        code, message = error.get("code"), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, raw[:500].decode("utf-8", "replace"), None
    found = engine_error(message)
    if found is None:
        return code, message[:500], None
    prefix, engine = found
    return code, prefix + engine.message, engine


async def send_job(
    client: AgentClient, url: str, body: bytes, ticket: str
) -> aiohttp.ClientResponse:
    """POSTs one job and returns the open (streaming) response once the agent said 200; the
    caller releases it."""
    headers = {"content-type": "application/json", TICKET_HEADER: ticket}
    try:
        response = await client.session().post(url, data=body, headers=headers)
    except TRANSPORT_ERRORS as exc:
        raise AgentFailure(f"provider unreachable: {exc!r}", retryable=True) from exc
    if response.status == 200:
        return response
    try:
        raw = await response.read()
    except TRANSPORT_ERRORS:
        raw = b""
    finally:
        response.release()
    code, message, engine = _agent_error(raw)
    if code == "upstream_rejected" and response.status < 500:
        if response.status in PROVIDER_SIDE_STATUSES:  # the next provider may serve it
            raise AgentFailure(
                f"provider's engine answered {response.status}: {message}",
                retryable=True,
                status=response.status,
                code=code,
            )
        raise AgentFailure(message, retryable=False, status=response.status, engine=engine)
    raise AgentFailure(
        f"provider answered {response.status} {code or ''}: {message}".strip(),
        retryable=True,
        status=response.status,
        code=code,
    )


async def cancel_job(client: AgentClient, job_url: str, ticket: str) -> None:
    """Asks the agent to stop the job's stream (`POST {job_url}/cancel` with its ticket); the
    agent then ends the stream with an interrupted receipt. A refusal is only logged: the
    relay reads on either way."""
    url = job_endpoint(job_url, "cancel")
    try:
        async with client.session().post(url, headers={TICKET_HEADER: ticket}) as response:
            raw = await response.read()
    except TRANSPORT_ERRORS as exc:
        logger.warning("cancel of a job at %s failed: %r", url, exc)
        return
    if response.status != 200:
        code, message, _ = _agent_error(raw)
        logger.info("agent at %s did not cancel: %s %s %s", url, response.status, code, message)
