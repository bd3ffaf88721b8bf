"""Errors of settlement: what the chain says disagrees with what the market recorded."""

from __future__ import annotations

from market.errors import MarketError, NotFoundError


class EpochNotFoundError(NotFoundError):
    """No epoch with that number."""

    code = "epoch_not_found"


class ReceiptNotSettledError(NotFoundError):
    """The receipt does not exist, or its epoch has not been settled yet (no proof to give)."""

    code = "receipt_not_in_settled_epoch"


class EpochRootMismatchError(MarketError):
    """The chain recorded another root for an epoch than the market built: never ignore this."""

    status_code = 500
    code = "epoch_root_mismatch"


class EpochNotOnChainError(MarketError):
    """An epoch was to be recorded as settled but the chain has not settled it."""

    status_code = 500
    code = "epoch_not_on_chain"
