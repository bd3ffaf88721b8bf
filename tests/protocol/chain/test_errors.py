"""Every custom error in the shipped ABIs maps to its own named Python exception."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak

from protocol.chain import errors
from protocol.chain.artifacts import CONTRACTS, load_artifact
from protocol.chain.connection import connect


def _abi_errors() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for contract in CONTRACTS:
        for entry in load_artifact(contract).abi:
            if entry["type"] == "error":
                found[entry["name"]] = [arg["type"] for arg in entry["inputs"]]
    return found


@pytest.mark.parametrize("name", sorted(_abi_errors()))
def test_each_abi_error_decodes_to_its_own_class(name: str) -> None:
    types = _abi_errors()[name]
    samples = {"address": "0x" + "12" * 20, "uint256": 7, "uint64": 3, "bytes32": b"\x01" * 32}
    values = [samples.get(t, "field") for t in types]
    data = keccak(text=f"{name}({','.join(types)})")[:4] + encode(types, values)
    exc = errors.decode_revert(data)
    assert type(exc) is errors.revert_class(name)
    assert exc.error_name == name
    assert str(exc).startswith(f"{name}: ")


def test_unknown_revert_data_is_kept() -> None:
    exc = errors.decode_revert("0xdeadbeef")
    assert isinstance(exc, errors.UnknownRevert)
    assert "0xdeadbeef" in str(exc)


def test_unreachable_rpc_is_chain_unavailable() -> None:
    with pytest.raises(errors.ChainUnavailable, match="unreachable"):
        connect("http://127.0.0.1:9", timeout_s=2)
