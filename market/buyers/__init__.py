"""Buyers (keyed by their EVM address) and the API keys they call the market with."""
