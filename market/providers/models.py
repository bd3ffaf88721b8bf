"""Providers, offers, heartbeats and attestations: tables."""

from __future__ import annotations
