"""Epochs, their settlement lines, and the chain watcher's cursor: tables."""

from __future__ import annotations
