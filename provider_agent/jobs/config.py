"""Settings the job endpoint needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.messages import Domain


@dataclass(frozen=True)
class JobsConfig:
    """What the job endpoint is configured with.

    `provider_address` is the agent's own EVM address (EIP-55), the `provider` every
    accepted ticket must name; `market_public_key` the market's Ed25519 key (0x hex);
    `served_model` the model name vLLM serves and tickets must name; `model_digest`
    identifies the served weights (32-byte 0x hex); `data_dir` holds the receipt outbox.
    `max_concurrency` caps the jobs in progress at once (None: no cap); a job beyond it is
    refused with 429 `at_capacity` and `Retry-After: retry_after_s`. While the data dir's
    disk has less than `outbox_min_free_bytes` free, new jobs are refused with 503
    `outbox_unavailable` (0: no such check).
    """

    upstream_url: str
    market_public_key: str
    domain: Domain
    provider_address: str
    served_model: str
    model_digest: str
    data_dir: Path
    max_clock_skew_ms: int = 5_000
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = 600.0
    max_connections: int = 512
    replay_cache_max_entries: int = 1_000_000
    outbox_fsync: bool = False
    outbox_min_free_bytes: int = 64 * 1024 * 1024
    max_concurrency: int | None = None
    retry_after_s: int = 1
    max_body_bytes: int = 4 * 1024 * 1024
