"""Chain errors: one root, and one named exception for every custom error the contracts declare.

A revert's data is decoded against the shipped ABIs into the matching class, so callers catch
`EpochAlreadySettled` or `InsufficientEscrow`, never a bare web3 exception. Each class holds the
error's decoded arguments in `args_by_name` and says what happened in its message.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

from eth_abi.abi import decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from protocol.chain.artifacts import CONTRACTS, load_artifact


class ChainError(Exception):
    """Root of every error raised by the chain client."""


class ChainUnavailable(ChainError):
    """The RPC endpoint could not be reached or did not answer in time."""


class TransactionFailed(ChainError):
    """A transaction was mined but reverted without data we can decode, or was dropped."""


class ContractRevert(ChainError):
    """A call or transaction reverted with a custom error declared in the contracts."""

    error_name: ClassVar[str] = ""
    template: ClassVar[str] = "contract reverted"

    def __init__(self, args_by_name: dict[str, Any]) -> None:
        self.args_by_name = args_by_name
        super().__init__(f"{self.error_name}: {self.template.format(**args_by_name)}")


class UnknownRevert(ContractRevert):
    """A revert whose data matches no error in the shipped ABIs (e.g. a panic)."""

    error_name = "UnknownRevert"
    template = "reverted with undecodable data {data}"


def _revert(name: str, template: str) -> type[ContractRevert]:
    cls = type(name, (ContractRevert,), {"error_name": name, "template": template})
    cls.__doc__ = f"Contract custom error `{name}`: {template}"
    return cls


# Settlement
ZeroAmount = _revert("ZeroAmount", "an amount that must be positive was zero")
ZeroAddress = _revert("ZeroAddress", "an address that must be set was zero")
AmountTooLarge = _revert("AmountTooLarge", "amount {amount} does not fit in 192 bits")
InsufficientEscrow = _revert(
    "InsufficientEscrow", "buyer {buyer} has {available} in escrow, {requested} was asked"
)
NoPendingExit = _revert("NoPendingExit", "{account} has no pending withdrawal or unstake")
ExitNotReady = _revert("ExitNotReady", "the exit of {account} is usable only from {availableAt}")
NothingToWithdraw = _revert("NothingToWithdraw", "nothing is left to pay out to {account}")
ProviderAlreadyRegistered = _revert(
    "ProviderAlreadyRegistered", "provider {provider} already bound a key"
)
UnknownProvider = _revert("UnknownProvider", "provider {provider} never bound a key")
ZeroKey = _revert("ZeroKey", "the Ed25519 public key was zero")
SameKey = _revert("SameKey", "{ed25519Key} is the key bound already")
InsufficientStake = _revert(
    "InsufficientStake", "provider {provider} has {staked} staked, {requested} was asked"
)
EpochAlreadySettled = _revert("EpochAlreadySettled", "epoch {epoch} was already settled")
EpochOutOfOrder = _revert("EpochOutOfOrder", "epoch {expected} is next, {got} was submitted")
UnbalancedBatch = _revert(
    "UnbalancedBatch", "debits {debits} do not equal credits {credits} plus fee {fee}"
)
FeeExceedsLimit = _revert("FeeExceedsLimit", "fee {fee} exceeds the limit {limit}")
RewardCapExceeded = _revert("RewardCapExceeded", "rewards {total} exceed the epoch cap {cap}")
RewardsTooSoon = _revert("RewardsTooSoon", "the next rewards may be minted from {availableAt}")
EvidenceAlreadyUsed = _revert("EvidenceAlreadyUsed", "evidence {evidenceHash} was already used")
InvalidConfig = _revert("InvalidConfig", "configuration field {field} is out of range")
# Tokens
FaucetDisabled = _revert("FaucetDisabled", "the faucet is disabled in this deployment")
FaucetAmountTooLarge = _revert(
    "FaucetAmountTooLarge", "{requested} asked of the faucet, at most {maxAmount} per call"
)
NotMinter = _revert("NotMinter", "{caller} may not mint rewards")
MinterAlreadyBound = _revert("MinterAlreadyBound", "the minter is already bound to {minter}")
ZeroMinter = _revert("ZeroMinter", "the minter address was zero")
EpochMintCapExceeded = _revert(
    "EpochMintCapExceeded",
    "epoch {epoch} minted {alreadyMinted}, {requested} more would pass the cap {cap}",
)
# OpenZeppelin
AccessControlUnauthorizedAccount = _revert(
    "AccessControlUnauthorizedAccount", "{account} lacks the role {neededRole}"
)
AccessControlBadConfirmation = _revert(
    "AccessControlBadConfirmation", "a role can only be renounced by its holder"
)
EnforcedPause = _revert("EnforcedPause", "the contract is paused")
ExpectedPause = _revert("ExpectedPause", "the contract is not paused")
ReentrancyGuardReentrantCall = _revert("ReentrancyGuardReentrantCall", "reentrant call")
SafeERC20FailedOperation = _revert("SafeERC20FailedOperation", "token {token} transfer failed")
ERC20InsufficientBalance = _revert(
    "ERC20InsufficientBalance", "{sender} holds {balance}, {needed} is needed"
)
ERC20InsufficientAllowance = _revert(
    "ERC20InsufficientAllowance", "{spender} may spend {allowance}, {needed} is needed"
)
ERC20InvalidApprover = _revert("ERC20InvalidApprover", "invalid approver {approver}")
ERC20InvalidReceiver = _revert("ERC20InvalidReceiver", "invalid receiver {receiver}")
ERC20InvalidSender = _revert("ERC20InvalidSender", "invalid sender {sender}")
ERC20InvalidSpender = _revert("ERC20InvalidSpender", "invalid spender {spender}")

_CLASSES: dict[str, type[ContractRevert]] = {
    cls.error_name: cls for cls in ContractRevert.__subclasses__() if cls is not UnknownRevert
}


def revert_class(name: str) -> type[ContractRevert]:
    """The exception class of the custom error `name`."""
    return _CLASSES[name]


@cache
def _error_abis() -> dict[bytes, tuple[str, list[str], list[str]]]:
    """Selector -> (name, argument names, argument types) over every shipped ABI."""
    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for contract in CONTRACTS:
        for entry in load_artifact(contract).abi:
            if entry["type"] != "error":
                continue
            types = [arg["type"] for arg in entry["inputs"]]
            selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4]
            table[selector] = (entry["name"], [arg["name"] for arg in entry["inputs"]], types)
    return table


def _display(value: Any, abi_type: str) -> Any:
    if abi_type == "address":
        return to_checksum_address(value)
    if abi_type.startswith("bytes") and isinstance(value, bytes):
        return "0x" + value.hex()
    return value


def decode_revert(data: str | bytes | None) -> ContractRevert:
    """Decodes revert data (selector + ABI-encoded arguments) into its named exception."""
    raw = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else (data or b"")
    entry = _error_abis().get(raw[:4])
    if entry is None:
        return UnknownRevert({"data": "0x" + raw.hex()})
    name, arg_names, types = entry
    values = decode(types, raw[4:])
    args = {n: _display(v, t) for n, v, t in zip(arg_names, values, types, strict=True)}
    cls = _CLASSES.get(name)
    if cls is None:
        return UnknownRevert({"data": "0x" + raw.hex()})
    return cls(args)
