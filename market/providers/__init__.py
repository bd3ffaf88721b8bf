"""Providers: registration bound on-chain, offers, heartbeats, attestations."""
