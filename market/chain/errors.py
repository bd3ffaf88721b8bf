"""Errors of opening the market's chain: settings the deployed contracts would refuse."""

from __future__ import annotations

from market.errors import MarketError


class FeeAboveContractLimitError(MarketError):
    """The market is set to take a larger protocol fee than the contract lets an epoch take:
    every epoch would revert (`FeeExceedsLimit`) after its receipts were charged."""

    status_code = 500
    code = "fee_above_contract_limit"
