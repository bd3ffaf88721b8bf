"""The local vLLM engine as the agent sees it: its /metrics counters."""
