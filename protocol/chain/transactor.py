"""Signing and sending transactions from one local account.

Keeps its own nonce (so several transactions can be in flight), estimates gas with a margin,
waits for the receipt, and turns every revert into the named exception from `errors`.

A send with `replace_pending` takes the first nonce not yet mined, so it replaces a
transaction of this account still waiting in the mempool (one priced below the base fee
since, say) instead of queueing behind it. A node accepts a replacement only at higher fees:
at least `FEE_BUMP_PERCENT` over the fees the waiting one offered (remembered per nonce, or
found by trying again, higher, when this process does not know them) and never below what
the node suggests now.

A caller that must know which transaction it waits on (the market records each settlement
send on its epoch) passes `on_sent`: it is called with the hash, nonce and fees of each
transaction the node accepted, before the wait for its receipt.
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import requests
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    Web3RPCError,
)
from web3.types import Nonce, TxParams, TxReceipt

from protocol.chain.errors import ChainError, ChainUnavailable, TransactionFailed, decode_revert

GAS_MARGIN_PERCENT = 20

FEE_BUMP_PERCENT = 25
"""How much higher a replacement's fees are than those of the transaction it replaces (nodes
ask for 10 %, geth's default; more leaves room for the suggestion to have moved)."""
REPLACEMENT_TRIES = 6
"""Sends of one replacement, each `FEE_BUMP_PERCENT` higher, while the node calls it
underpriced (the waiting transaction's fees are unknown here)."""
_FEE_FIELDS = ("maxFeePerGas", "maxPriorityFeePerGas", "gasPrice")

_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass(frozen=True)
class SentTransaction:
    """A transaction the node accepted and has not mined yet: its hash (`0x`-hex), nonce and
    fees (wei). A legacy transaction's `gasPrice` is both its fees, as EIP-1559 reads it."""

    tx_hash: str
    nonce: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    @classmethod
    def of(cls, tx_hash: HexBytes, nonce: int, fees: dict[str, int]) -> SentTransaction:
        """The send of `tx_hash` at `nonce` offering `fees` (`_fees_of`)."""
        max_fee = fees["maxFeePerGas"] if "maxFeePerGas" in fees else fees["gasPrice"]
        tip = fees["maxPriorityFeePerGas"] if "maxPriorityFeePerGas" in fees else fees["gasPrice"]
        return cls("0x" + bytes(tx_hash).hex(), nonce, max_fee, tip)


OnSent = Callable[[SentTransaction], None]


def _eth_tester_revert_data(exc: Exception) -> str | None:
    """eth-tester reports a revert as `execution reverted: b'...'` (the bytes' repr)."""
    message = str(exc.args[0]) if exc.args else ""
    prefix = "execution reverted: "
    if not message.startswith(prefix):
        return None
    try:
        raw = ast.literal_eval(message[len(prefix) :])
    except (ValueError, SyntaxError):
        return None
    return "0x" + raw.hex() if isinstance(raw, bytes) and len(raw) >= 4 else None


def revert_data(exc: Exception) -> str | None:
    """The raw revert data carried by a web3 (or eth-tester) exception, if any."""
    if type(exc).__module__.startswith("eth_tester"):
        return _eth_tester_revert_data(exc)
    data: Any = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        return data
    return None


def translate(exc: Exception) -> ChainError:
    """Maps an exception raised by web3 or its transport to the project's chain errors."""
    if isinstance(exc, ChainError):
        return exc
    is_tester = type(exc).__module__.startswith("eth_tester")
    if is_tester or isinstance(exc, ContractCustomError | ContractLogicError | Web3RPCError):
        data = revert_data(exc)
        if data is not None:
            return decode_revert(data)
        return TransactionFailed(str(exc))
    if isinstance(exc, requests.RequestException | ProviderConnectionError | OSError):
        return ChainUnavailable(f"chain RPC unavailable: {exc}")
    if isinstance(exc, TimeExhausted):
        return TransactionFailed(f"transaction not mined in time: {exc}")
    return TransactionFailed(f"{type(exc).__name__}: {exc}")


class Transactor:
    """Sends transactions signed by `account` on `w3`."""

    def __init__(self, w3: Web3, account: LocalAccount, receipt_timeout_s: float = 120.0) -> None:
        self.w3 = w3
        self.account = account
        self.receipt_timeout_s = receipt_timeout_s
        self._lock = threading.Lock()
        self._next_nonce: int | None = None
        self._fees: dict[int, dict[str, int]] = {}
        """The fees offered at each nonce this process sent and has not seen mined."""

    @property
    def address(self) -> str:
        """The sender's checksummed address."""
        return str(self.account.address)

    def resync(self) -> None:
        """Reads the nonce from the node again at the next send: for a transaction resent
        because the first is not on-chain (dropped, or taken away by a reorganisation, which
        frees its nonce)."""
        with self._lock:
            self._next_nonce = None

    def _nonce(self) -> int:
        if self._next_nonce is None:
            self._next_nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
        nonce = self._next_nonce
        self._next_nonce += 1
        return nonce

    def transact(
        self,
        call: ContractFunction | ContractConstructor,
        value: int = 0,
        *,
        replace_pending: bool = False,
        on_sent: OnSent | None = None,
    ) -> TxReceipt:
        """Estimates, signs, sends and waits for `call`; raises a named error on revert.
        `replace_pending`: takes the place of this account's oldest transaction still
        waiting to be mined, if any; `on_sent`: told of the transaction the node accepted,
        before the wait (module doc). What `on_sent` raises is raised as it is."""
        tx, sent = _translated(self._sign_and_send, call, value, replace_pending)
        if on_sent is not None:
            on_sent(sent)
        receipt = _translated(self._wait, sent)
        if receipt["status"] != 1:
            raise self._failure(tx, receipt)
        return receipt

    def _sign_and_send(
        self, call: ContractFunction | ContractConstructor, value: int, replace_pending: bool
    ) -> tuple[TxParams, SentTransaction]:
        """Builds `call` with its gas and nonce and sends it (`_send`), under the nonce lock."""
        with self._lock:
            params: TxParams = {
                "from": self.account.address,
                "value": value,  # type: ignore[typeddict-item]
                "chainId": self.w3.eth.chain_id,
            }
            estimate = call.estimate_gas(params)
            params["gas"] = estimate + estimate * GAS_MARGIN_PERCENT // 100
            nonce: int
            if replace_pending:
                nonce = self.w3.eth.get_transaction_count(self.account.address, "latest")
                self._next_nonce = None  # others may wait behind it: read them afresh
            else:
                nonce = self._nonce()
            params["nonce"] = Nonce(nonce)
            tx = call.build_transaction(params)
            return tx, self._send(tx, nonce)

    def _send(self, tx: TxParams, nonce: int) -> SentTransaction:
        """Signs and sends `tx` at `nonce`, above the fees of an earlier send at that nonce
        and, while the node calls it underpriced, higher each time."""
        waiting, tries = self._fees.get(nonce), 1
        while True:
            if waiting is not None:
                _outbid(tx, waiting)
            signed = self.account.sign_transaction(tx)  # type: ignore[arg-type]
            try:
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:
                if _underpriced(exc) and tries < REPLACEMENT_TRIES:
                    waiting, tries = _fees_of(tx), tries + 1
                    continue
                self._next_nonce = None  # resync from the node on the next send
                raise
            self._fees[nonce] = _fees_of(tx)
            return SentTransaction.of(tx_hash, nonce, self._fees[nonce])

    def _wait(self, sent: SentTransaction) -> TxReceipt:
        """The receipt of `sent`. If it is not mined in time, the next send reads the nonce
        from the node again: a transaction the node dropped leaves its nonce free, and one
        still pending is counted there, so later sends neither leave a gap nor collide."""
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                HexBytes(sent.tx_hash), timeout=self.receipt_timeout_s
            )
        except TimeExhausted:
            self.resync()
            raise
        self._fees.pop(sent.nonce, None)
        return receipt

    def _failure(self, tx: TxParams, receipt: TxReceipt) -> ChainError:
        """Replays a reverted transaction at its block to recover the revert reason."""
        replay: dict[str, Any] = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        try:
            self.w3.eth.call(replay, receipt["blockNumber"] - 1)  # type: ignore[arg-type]
        except Exception as exc:
            return translate(exc)
        return TransactionFailed(
            f"transaction {HexBytes(receipt['transactionHash']).hex()} reverted"
        )


def _translated(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`fn(*args, **kwargs)`, raising what it raises as the project's chain errors
    (`translate`)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise translate(exc) from exc


def _fees_of(tx: TxParams) -> dict[str, int]:
    fields = cast(dict[str, Any], tx)
    return {k: int(fields[k]) for k in _FEE_FIELDS if k in fields}


def _outbid(tx: TxParams, waiting: dict[str, int]) -> None:
    """Raises `tx`'s fees to `FEE_BUMP_PERCENT` above `waiting`'s where they are not already."""
    fields = cast(dict[str, Any], tx)
    for field in _FEE_FIELDS:
        if field in fields and field in waiting:
            floor = waiting[field] + (waiting[field] * FEE_BUMP_PERCENT + 99) // 100
            fields[field] = max(int(fields[field]), floor)


def _underpriced(exc: Exception) -> bool:
    """The node refused a replacement for offering too little over the transaction it would
    replace (geth: "replacement transaction underpriced"; anvil: "... underpriced")."""
    return "underpriced" in str(exc).lower()
