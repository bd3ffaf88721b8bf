"""EVM addresses as the market stores them: EIP-55 checksummed strings."""

from __future__ import annotations

import re

from eth_utils.address import is_checksum_address, to_checksum_address

from market.errors import InvalidAddressError

_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def checksum_address(value: str) -> str:
    """`value` in EIP-55 checksummed form.

    Accepts `0x` and 40 hex digits, all-lowercase or all-uppercase, or mixed case only with a
    correct checksum (a wrong one usually means a typo, so it is refused, not silently fixed).
    """
    if not isinstance(value, str) or not _HEX_ADDRESS.match(value):
        raise InvalidAddressError(f"not an EVM address (0x and 40 hex digits): {value!r}")
    digits = value[2:]
    mixed = digits != digits.lower() and digits != digits.upper()
    if mixed and not is_checksum_address(value):
        raise InvalidAddressError(f"EVM address with a wrong EIP-55 checksum: {value!r}")
    return str(to_checksum_address(value))
