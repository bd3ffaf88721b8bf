"""The settlement contract and its tokens, seen from Python.

Reads take no account; writes take the `Transactor` of whoever sends them (buyer, provider,
operator, verifier). Every revert surfaces as the named exception from `errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from protocol.chain.artifacts import load_artifact
from protocol.chain.deploy import Deployment
from protocol.chain.transactor import OnSent, Transactor, translate

ESCROWS_PER_CALL = 500
"""Buyers read by one `escrowsOf` call: two cold storage reads each, about 2.2M gas of an
`eth_call`'s budget at 500, well inside the usual 30M+ caps."""


@dataclass(frozen=True)
class Debit:
    """One buyer's charge in an epoch (payment-token base units)."""

    buyer: str
    amount: int


@dataclass(frozen=True)
class Credit:
    """One provider's earnings or reward in an epoch (base units of the token concerned)."""

    provider: str
    amount: int


@dataclass(frozen=True)
class EpochBatch:
    """Everything one epoch settles on-chain, whole or not at all."""

    epoch: int
    receipts_root: bytes
    receipt_count: int
    fee: int
    debits: list[Debit] = field(default_factory=list)
    credits: list[Credit] = field(default_factory=list)
    rewards: list[Credit] = field(default_factory=list)

    def as_abi(self) -> tuple[Any, ...]:
        """The batch as the tuple the contract's `settleEpoch` takes."""
        return (
            self.epoch,
            self.receipts_root,
            self.receipt_count,
            self.fee,
            [(d.buyer, d.amount) for d in self.debits],
            [(c.provider, c.amount) for c in self.credits],
            [(r.provider, r.amount) for r in self.rewards],
        )


@dataclass(frozen=True)
class ChainEvent:
    """A contract event with where it was mined."""

    name: str
    args: dict[str, Any]
    block: int
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class SettlementTotals:
    """The contract's running totals; the ledger reconciles against these."""

    escrow: int
    earnings: int
    staked: int
    accrued_fees: int
    debited: int
    credited: int
    fees: int
    last_settled_epoch: int
    payment_balance: int
    network_balance: int


class SettlementClient:
    """Calls and transactions against one deployment."""

    def __init__(self, w3: Web3, deployment: Deployment) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.settlement: Contract = self._contract("Settlement", deployment.settlement)
        self.payment: Contract = self._contract("PaymentToken", deployment.payment_token)
        self.network: Contract = self._contract("NetworkToken", deployment.network_token)

    def _contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=address, abi=load_artifact(name).abi)  # type: ignore[call-overload,no-any-return]

    def _call(self, contract: Contract, fn: str, *args: Any, block: int | None = None) -> Any:
        """`fn(*args)` as of `block` (None: the newest)."""
        try:
            return getattr(contract.functions, fn)(*args).call(block_identifier=block)
        except Exception as exc:
            raise translate(exc) from exc

    # -- reads ---------------------------------------------------------------------------

    def escrow(self, buyer: str) -> int:
        """The buyer's escrow in payment-token base units."""
        return int(self._call(self.settlement, "escrow", buyer))

    def pending_withdrawal(self, buyer: str) -> tuple[int, int]:
        """(amount, available-at unix seconds) of the buyer's pending withdrawal."""
        amount, available_at = self._call(self.settlement, "pendingWithdrawal", buyer)
        return int(amount), int(available_at)

    def escrows_of(
        self, buyers: Sequence[str], block: int | None = None
    ) -> list[tuple[int, int, int]]:
        """(escrow, pending withdrawal, its available-at unix seconds) of each buyer, in the
        order given, in one call per `ESCROWS_PER_CALL` buyers, as of `block` (None: the
        newest)."""
        out: list[tuple[int, int, int]] = []
        for start in range(0, len(buyers), ESCROWS_PER_CALL):
            chunk = list(buyers[start : start + ESCROWS_PER_CALL])
            escrows, withdrawals = self._call(self.settlement, "escrowsOf", chunk, block=block)
            out.extend(
                (int(escrow), int(amount), int(available_at))
                for escrow, (amount, available_at) in zip(escrows, withdrawals, strict=True)
            )
        return out

    def stake_of(self, provider: str) -> int:
        """The provider's stake in network-token base units (pending unstakes included)."""
        return int(self._call(self.settlement, "stakeOf", provider))

    def earnings(self, provider: str, block: int | None = None) -> int:
        """The provider's settled, unwithdrawn earnings in payment-token base units, as of
        `block` (None: the newest)."""
        return int(self._call(self.settlement, "earnings", provider, block=block))

    def provider_key(self, provider: str) -> bytes:
        """The Ed25519 public key bound to `provider` (32 zero bytes if none)."""
        return bytes(self._call(self.settlement, "providerKey", provider))

    def is_active_provider(self, provider: str) -> bool:
        """Registered, with at least the minimum stake not leaving."""
        return bool(self._call(self.settlement, "isActiveProvider", provider))

    def min_provider_stake(self) -> int:
        """The deployment's minimum stake, in network-token base units."""
        return int(self._call(self.settlement, "minProviderStake"))

    def epoch_mint_cap(self) -> int:
        """The most network tokens the rewards of one epoch may mint (base units)."""
        return int(self._call(self.network, "epochMintCap"))

    def withdrawal_delay(self) -> int:
        """Seconds between a buyer's withdrawal request and the first moment it can withdraw."""
        return int(self._call(self.settlement, "withdrawalDelay"))

    def max_fee_bps(self) -> int:
        """The highest protocol fee, in basis points of the debits, an epoch may take."""
        return int(self._call(self.settlement, "maxFeeBps"))

    def block_gas_limit(self) -> int:
        """The gas limit of the newest block: no transaction can use more."""
        try:
            return int(self.w3.eth.get_block("latest")["gasLimit"])
        except Exception as exc:
            raise translate(exc) from exc

    def min_reward_interval(self) -> int:
        """Seconds that must pass between two epochs that mint rewards."""
        return int(self._call(self.settlement, "minRewardInterval"))

    def last_rewarded_at(self) -> int:
        """Unix seconds of the block that last minted rewards (0: never)."""
        return int(self._call(self.settlement, "lastRewardedAt"))

    def latest_block_timestamp(self) -> int:
        """Unix seconds of the newest block (the next one is no older)."""
        try:
            return int(self.w3.eth.get_block("latest")["timestamp"])
        except Exception as exc:
            raise translate(exc) from exc

    def last_settled_epoch(self, block: int | None = None) -> int:
        """The last settled epoch (0 before the first), as of `block` (None: the newest)."""
        return int(self._call(self.settlement, "lastSettledEpoch", block=block))

    def epoch_root(self, epoch: int) -> bytes:
        """The receipts Merkle root recorded for `epoch` (zeros if not settled)."""
        return bytes(self._call(self.settlement, "epochRoot", epoch))

    def forfeited_rewards(self, epoch: int, block: int) -> dict[str, int]:
        """The rewards of `epoch`, settled in `block`, that were not minted because their
        provider was not active when the batch was mined (`RewardForfeited`), by address."""
        forfeited: dict[str, int] = {}
        for event in self.events("RewardForfeited", block, block):
            if int(event.args["epoch"]) == epoch:
                provider = str(event.args["provider"])
                forfeited[provider] = forfeited.get(provider, 0) + int(event.args["amount"])
        return forfeited

    def verify_receipt(self, epoch: int, receipt_hash: bytes, proof: list[bytes]) -> bool:
        """Asks the contract whether the receipt is in the epoch's tree."""
        return bool(self._call(self.settlement, "verifyReceipt", epoch, receipt_hash, proof))

    def payment_balance(self, account: str, block: int | None = None) -> int:
        """Payment tokens held by `account`, as of `block` (None: the newest)."""
        return int(self._call(self.payment, "balanceOf", account, block=block))

    def network_balance(self, account: str, block: int | None = None) -> int:
        """Network tokens held by `account`, as of `block` (None: the newest)."""
        return int(self._call(self.network, "balanceOf", account, block=block))

    def totals(self, block: int | None = None) -> SettlementTotals:
        """The contract's running totals and its token balances, as of `block` (None: the
        newest)."""
        s = self.settlement.address

        def total(fn: str) -> int:
            return int(self._call(self.settlement, fn, block=block))

        return SettlementTotals(
            escrow=total("totalEscrow"),
            earnings=total("totalEarnings"),
            staked=total("totalStaked"),
            accrued_fees=total("accruedFees"),
            debited=total("totalDebited"),
            credited=total("totalCredited"),
            fees=total("totalFees"),
            last_settled_epoch=self.last_settled_epoch(block),
            payment_balance=self.payment_balance(s, block),
            network_balance=self.network_balance(s, block),
        )

    # -- buyers --------------------------------------------------------------------------

    def faucet(self, sender: Transactor, to: str, amount: int) -> TxReceipt:
        """Mints test payment tokens (testnet deployments only)."""
        return sender.transact(self.payment.functions.faucet(to, amount))

    def deposit(self, sender: Transactor, amount: int, buyer: str | None = None) -> TxReceipt:
        """Approves and deposits `amount` into the escrow of `buyer` (default: the sender)."""
        sender.transact(self.payment.functions.approve(self.settlement.address, amount))
        if buyer is None:
            return sender.transact(self.settlement.functions.deposit(amount))
        return sender.transact(self.settlement.functions.depositFor(buyer, amount))

    def request_withdrawal(self, sender: Transactor, amount: int) -> TxReceipt:
        """Starts a delayed withdrawal of escrow."""
        return sender.transact(self.settlement.functions.requestWithdrawal(amount))

    def withdraw(self, sender: Transactor) -> TxReceipt:
        """Completes the sender's pending withdrawal."""
        return sender.transact(self.settlement.functions.withdraw())

    # -- providers -----------------------------------------------------------------------

    def register_provider(self, sender: Transactor, ed25519_public_key: bytes) -> TxReceipt:
        """Binds the sender's address to its 32-byte Ed25519 receipt-signing key."""
        if len(ed25519_public_key) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(ed25519_public_key)}")
        return sender.transact(self.settlement.functions.registerProvider(ed25519_public_key))

    def rotate_provider_key(self, sender: Transactor, ed25519_public_key: bytes) -> TxReceipt:
        """Replaces the sender's bound Ed25519 key (`ProviderKeyRotated`): whatever the old key
        signs from then on is void at the market."""
        if len(ed25519_public_key) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(ed25519_public_key)}")
        return sender.transact(self.settlement.functions.rotateProviderKey(ed25519_public_key))

    def stake(self, sender: Transactor, amount: int) -> TxReceipt:
        """Approves and stakes `amount` network tokens."""
        sender.transact(self.network.functions.approve(self.settlement.address, amount))
        return sender.transact(self.settlement.functions.stake(amount))

    def request_unstake(self, sender: Transactor, amount: int) -> TxReceipt:
        """Starts a delayed unstake."""
        return sender.transact(self.settlement.functions.requestUnstake(amount))

    def complete_unstake(self, sender: Transactor) -> TxReceipt:
        """Completes the sender's pending unstake."""
        return sender.transact(self.settlement.functions.completeUnstake())

    def withdraw_earnings(self, sender: Transactor) -> TxReceipt:
        """Pays the sender its settled earnings."""
        return sender.transact(self.settlement.functions.withdrawEarnings())

    def transfer_network(self, sender: Transactor, to: str, amount: int) -> TxReceipt:
        """Sends network tokens (e.g. from the genesis holder to a new provider)."""
        return sender.transact(self.network.functions.transfer(to, amount))

    # -- operator, verifier, admin -------------------------------------------------------

    def settle_epoch(
        self, sender: Transactor, batch: EpochBatch, on_sent: OnSent | None = None
    ) -> TxReceipt:
        """Settles `batch` whole, or raises the contract's named error and changes nothing.

        Sent in place of the sender's oldest transaction not yet mined, at higher fees
        (`Transactor.transact(replace_pending=True)`): the operator sends only settlements,
        one epoch at a time, so a waiting one is an earlier send of this epoch, stuck below
        the base fee or dropped, and a settlement queued behind it would wait as long.
        `on_sent` is told of the transaction sent, before the wait for it to be mined."""
        call = self.settlement.functions.settleEpoch(batch.as_abi())
        return sender.transact(call, replace_pending=True, on_sent=on_sent)

    def slash(
        self, sender: Transactor, provider: str, amount: int, evidence_hash: bytes
    ) -> TxReceipt:
        """Burns `amount` of `provider`'s stake for `evidence_hash` (verifier role)."""
        return sender.transact(self.settlement.functions.slash(provider, amount, evidence_hash))

    def withdraw_fees(self, sender: Transactor, to: str) -> TxReceipt:
        """Sends the accrued protocol fees to `to` (admin role)."""
        return sender.transact(self.settlement.functions.withdrawFees(to))

    def grant_role(self, sender: Transactor, role: bytes, account: str) -> TxReceipt:
        """Grants a role (admin role)."""
        return sender.transact(self.settlement.functions.grantRole(role, account))

    def set_paused(self, sender: Transactor, paused: bool) -> TxReceipt:
        """Pauses or unpauses (pauser role)."""
        fn = self.settlement.functions.pause if paused else self.settlement.functions.unpause
        return sender.transact(fn())

    # -- events --------------------------------------------------------------------------

    def confirmed_head(self, confirmations: int) -> int:
        """The newest block with at least `confirmations` blocks on top of it (or -1)."""
        try:
            return int(self.w3.eth.block_number) - confirmations
        except Exception as exc:
            raise translate(exc) from exc

    def events(self, name: str, from_block: int, to_block: int) -> list[ChainEvent]:
        """The settlement contract's `name` events mined in [from_block, to_block]."""
        return self.events_of((name,), from_block, to_block)

    def events_of(self, names: Sequence[str], from_block: int, to_block: int) -> list[ChainEvent]:
        """The settlement contract's events of the kinds `names` mined in [from_block,
        to_block], in chain order, from one `eth_getLogs` (one round trip to the node)."""
        if to_block < from_block:
            return []
        kinds: dict[bytes, tuple[str, Any]] = {}
        for name in names:
            kind = getattr(self.settlement.events, name)()
            kinds[bytes(HexBytes(kind.topic))] = (name, kind)
        try:
            logs = self.w3.eth.get_logs(
                {
                    "address": self.settlement.address,
                    "fromBlock": from_block,
                    "toBlock": to_block,
                    "topics": [["0x" + topic.hex() for topic in kinds]],
                }
            )
        except Exception as exc:
            raise translate(exc) from exc
        out: list[ChainEvent] = []
        for raw in logs:
            name, kind = kinds[bytes(raw["topics"][0])]
            log = kind.process_log(raw)
            out.append(
                ChainEvent(
                    name=name,
                    args=dict(log["args"]),
                    block=int(log["blockNumber"]),
                    tx_hash="0x" + bytes(log["transactionHash"]).hex(),
                    log_index=int(log["logIndex"]),
                )
            )
        out.sort(key=lambda e: (e.block, e.log_index))
        return out

    def deposits(self, from_block: int, to_block: int) -> list[ChainEvent]:
        """`Deposited` events in the range, oldest first."""
        return self.events("Deposited", from_block, to_block)
