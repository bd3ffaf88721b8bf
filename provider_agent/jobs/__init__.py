"""The provider agent's job endpoint: check the market's ticket, relay to vLLM, sign a receipt.

See docs/agent-protocol.md for the wire format between the market and the agent.
"""

from provider_agent.jobs.app import create_app
from provider_agent.jobs.config import JobsConfig
from provider_agent.jobs.outbox import ReceiptOutbox

__all__ = ["JobsConfig", "ReceiptOutbox", "create_app"]
