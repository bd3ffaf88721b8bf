"""The local vLLM engine as the agent sees it: its /metrics counters and /v1/models."""
