"""What the agent observed of a job, and the signed receipt built from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from protocol.messages import Receipt, ReceiptStatus, Signed, output_digest, sign
from provider_agent.jobs.config import JobsConfig
from provider_agent.jobs.energy import RequestEnergyTracker
from provider_agent.jobs.errors import JobError
from provider_agent.jobs.outbox import ReceiptOutbox
from provider_agent.jobs.served import ServedTotals
from provider_agent.jobs.tickets import AcceptedJob

logger = logging.getLogger(__name__)


@dataclass
class Observation:
    """Token ids, usage and times (unix ms) seen in the engine's response."""

    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_at: int | None = None
    saw_token_ids: bool = False
    prompt_token_ids: int | None = None

    def add_prompt_ids(self, ids: object) -> None:
        """Count the prompt token ids vLLM sends once (first chunk) with return_token_ids."""
        if isinstance(ids, list) and self.prompt_token_ids is None:
            self.prompt_token_ids = len(ids)

    def add_choice(self, choice: dict[str, Any], now_ms: int) -> None:
        """Take the output token ids of one (delta) choice."""
        self.add_prompt_ids(choice.get("prompt_token_ids"))
        ids = choice.get("token_ids")
        if isinstance(ids, list):
            self.saw_token_ids = True
            if ids and self.first_token_at is None:
                self.first_token_at = now_ms
            self.token_ids.extend(ids)

    def add_usage(self, usage: object) -> None:
        """Take the engine's usage block, if this message has one."""
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if type(prompt) is int and type(completion) is int:
                self.prompt_tokens, self.completion_tokens = prompt, completion


class ReceiptIssuer:
    """Builds, signs and stores a receipt for each completed or interrupted job."""

    def __init__(
        self,
        config: JobsConfig,
        signing_key: SigningKey,
        tracker: RequestEnergyTracker,
        outbox: ReceiptOutbox,
    ) -> None:
        """The provider's Ed25519 key signs; the outbox keeps every receipt; `served` counts
        each one stored."""
        self._config = config
        self._key = signing_key
        self._tracker = tracker
        self._outbox = outbox
        self.served = ServedTotals()

    def issue(self, job: AcceptedJob, seen: Observation, finished_at: int) -> Signed[Receipt]:
        """Sign and store the receipt; raise 502 if the engine's answer cannot back one."""
        job_id = job.ticket.job_id
        if seen.prompt_tokens is None or seen.completion_tokens is None:
            self._tracker.cancel(job_id)
            raise JobError(502, "upstream_no_usage", "engine response has no usage")
        if seen.completion_tokens and not seen.saw_token_ids:
            self._tracker.cancel(job_id)
            raise JobError(502, "upstream_no_token_ids", "engine ignored return_token_ids")
        if len(seen.token_ids) != seen.completion_tokens:
            logger.warning(
                "job %s: usage says %d tokens, %d token ids relayed",
                job_id,
                seen.completion_tokens,
                len(seen.token_ids),
            )
        return self._sign(job, seen.token_ids, seen.prompt_tokens, seen, finished_at, "complete")

    def issue_interrupted(
        self,
        job: AcceptedJob,
        seen: Observation,
        delivered: int,
        finished_at: int,
        reason: str,
    ) -> Signed[Receipt] | None:
        """Sign and store an interrupted receipt for the first `delivered` output tokens.

        None (and the energy window is dropped) when no token was delivered: nothing to
        pay. Prompt tokens: the engine's usage if it came, else the number of prompt
        token ids in its first chunk, else 0 (never a guess).
        """
        job_id = job.ticket.job_id
        if delivered <= 0:
            self._tracker.cancel(job_id)
            return None
        if seen.prompt_tokens is not None:
            prompt = seen.prompt_tokens
        elif seen.prompt_token_ids is not None:
            prompt = seen.prompt_token_ids
        else:
            logger.warning("job %s: interrupted before the engine reported prompt tokens", job_id)
            prompt = 0
        token_ids = seen.token_ids[:delivered]
        return self._sign(job, token_ids, prompt, seen, finished_at, "interrupted", reason)

    def _sign(
        self,
        job: AcceptedJob,
        token_ids: list[int],
        prompt: int,
        seen: Observation,
        finished_at: int,
        status: ReceiptStatus,
        reason: str | None = None,
    ) -> Signed[Receipt]:
        job_id = job.ticket.job_id
        completion = len(token_ids) if status == "interrupted" else seen.completion_tokens or 0
        first = None if completion == 0 else (seen.first_token_at or finished_at)
        energy = self._tracker.finish(job_id, prompt, completion)
        receipt = Receipt(
            job_id=job_id,
            provider=job.ticket.provider,
            model=job.ticket.model,
            model_digest=self._config.model_digest,
            prompt_tokens=prompt,
            completion_tokens=completion,
            output_digest=output_digest(token_ids),
            first_token_at=first,
            finished_at=max(finished_at, first or 0),
            energy=energy,
            attestation_seq=None,
            ticket_digest=job.ticket_digest,
            status=status,
            interrupted_reason=reason,
            domain=job.ticket.domain,
        )
        envelope = sign(receipt, self._key)
        try:
            self._outbox.add(envelope)
        except OSError as exc:
            logger.error("job %s: receipt not stored, so not sent: %s", job_id, exc)
            raise outbox_unavailable(self._outbox) from exc
        self.served.add(receipt)
        return envelope


def outbox_unavailable(outbox: ReceiptOutbox) -> JobError:
    """503 `outbox_unavailable`: receipts cannot be stored, so none can be sent."""
    return JobError(503, "outbox_unavailable", f"the agent cannot store receipts: {outbox.error}")
