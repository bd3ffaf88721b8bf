"""Jobs and the receipts providers sign for them: tables."""

from __future__ import annotations
