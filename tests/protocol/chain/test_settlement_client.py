"""The chain client against the compiled contracts, on eth-tester and on anvil."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from protocol.chain import errors, settlement
from protocol.chain.connection import advance_time, is_embedded
from protocol.chain.deploy import VERIFIER_ROLE
from protocol.chain.settlement import Credit, Debit, EpochBatch
from protocol.chain.transactor import Transactor
from protocol.merkle import MerkleTree
from tests.protocol.chain.conftest import PARAMS, Chain
from tests.support.chain import automine_off, mining_once_replaced, pooled

KEY_A = bytes.fromhex("11" * 32)
KEY_B = bytes.fromhex("22" * 32)
ROOT = bytes.fromhex("ab" * 32)


def test_deploy_binds_minter_and_roles(chain: Chain) -> None:
    d = chain.deployment
    assert d.chain_id == chain.w3.eth.chain_id
    assert chain.client.network.functions.minter().call() == d.settlement
    assert chain.client.payment.functions.decimals().call() == 6
    assert chain.client.network_balance(chain.admin.address) == PARAMS.network_genesis_supply
    assert chain.client.last_settled_epoch() == 0
    assert chain.client.min_provider_stake() == PARAMS.min_provider_stake


def test_deposit_is_seen_only_after_confirmations(chain: Chain) -> None:
    buyer = chain.buyer(5_000_000)
    mined = chain.w3.eth.block_number
    assert chain.client.escrow(buyer.address) == 5_000_000

    confirmations = 3
    assert chain.client.confirmed_head(confirmations) < mined
    seen = chain.client.deposits(chain.deployment.block, chain.client.confirmed_head(confirmations))
    assert [e for e in seen if e.args["buyer"] == buyer.address] == []

    for _ in range(confirmations):
        advance_time(chain.w3, 1)  # mines a block
    seen = chain.client.deposits(chain.deployment.block, chain.client.confirmed_head(confirmations))
    (event,) = [e for e in seen if e.args["buyer"] == buyer.address]
    assert event.args["amount"] == 5_000_000
    assert event.args["payer"] == buyer.address
    assert event.block == mined
    assert event.tx_hash.startswith("0x")


def test_register_and_stake_make_a_provider_active(chain: Chain) -> None:
    provider = chain.provider(KEY_A)
    assert chain.client.provider_key(provider.address) == KEY_A
    assert chain.client.stake_of(provider.address) == PARAMS.min_provider_stake
    assert chain.client.is_active_provider(provider.address)

    chain.client.request_unstake(provider, 1)
    assert not chain.client.is_active_provider(provider.address)


def test_settle_epoch_pays_providers_exactly_and_records_root(chain: Chain) -> None:
    buyer_1, buyer_2 = chain.buyer(1_000_000), chain.buyer(2_000_000)
    provider_a, provider_b = chain.provider(KEY_A), chain.provider(KEY_B)
    receipt_hashes = [bytes([i]) * 32 for i in range(1, 6)]
    tree = MerkleTree(receipt_hashes)
    batch = EpochBatch(
        epoch=1,
        receipts_root=tree.root,
        receipt_count=len(receipt_hashes),
        fee=30_000,
        debits=[Debit(buyer_1.address, 123_457), Debit(buyer_2.address, 176_543)],
        credits=[Credit(provider_a.address, 200_000), Credit(provider_b.address, 70_000)],
        rewards=[Credit(provider_a.address, 7 * 10**18)],
    )
    chain.client.settle_epoch(chain.admin, batch)

    assert chain.client.escrow(buyer_1.address) == 1_000_000 - 123_457
    assert chain.client.escrow(buyer_2.address) == 2_000_000 - 176_543
    assert chain.client.earnings(provider_a.address) == 200_000
    assert chain.client.network_balance(provider_a.address) == 7 * 10**18
    totals = chain.client.totals()
    assert totals.last_settled_epoch == 1
    assert totals.debited == totals.credited + totals.fees == 300_000
    assert totals.payment_balance == totals.escrow + totals.earnings + totals.accrued_fees
    assert chain.client.epoch_root(1) == tree.root
    for i, receipt_hash in enumerate(receipt_hashes):
        assert chain.client.verify_receipt(1, receipt_hash, tree.proof(i))
    assert not chain.client.verify_receipt(1, bytes(32), tree.proof(0))

    chain.client.withdraw_earnings(provider_a)
    assert chain.client.payment_balance(provider_a.address) == 200_000
    assert chain.client.earnings(provider_a.address) == 0


def test_replayed_epoch_reverts_with_its_name(chain: Chain) -> None:
    chain.client.settle_epoch(chain.admin, EpochBatch(1, ROOT, 0, 0))
    with pytest.raises(errors.EpochAlreadySettled, match="epoch 1 was already settled") as info:
        chain.client.settle_epoch(chain.admin, EpochBatch(1, ROOT, 0, 0))
    assert info.value.args_by_name == {"epoch": 1}


def test_out_of_order_epoch_reverts(chain: Chain) -> None:
    with pytest.raises(errors.EpochOutOfOrder) as info:
        chain.client.settle_epoch(chain.admin, EpochBatch(3, ROOT, 0, 0))
    assert info.value.args_by_name == {"expected": 1, "got": 3}


def test_unbalanced_batch_reverts_and_changes_nothing(chain: Chain) -> None:
    buyer, provider = chain.buyer(1_000), chain.provider(KEY_A)
    batch = EpochBatch(1, ROOT, 1, 10, [Debit(buyer.address, 500)], [Credit(provider.address, 491)])
    with pytest.raises(errors.UnbalancedBatch) as info:
        chain.client.settle_epoch(chain.admin, batch)
    assert info.value.args_by_name == {"debits": 500, "credits": 491, "fee": 10}
    assert chain.client.escrow(buyer.address) == 1_000
    assert chain.client.last_settled_epoch() == 0


def test_debit_beyond_escrow_reverts_whole_epoch(chain: Chain) -> None:
    rich, poor, provider = chain.buyer(10_000), chain.buyer(100), chain.provider(KEY_A)
    batch = EpochBatch(
        1,
        ROOT,
        2,
        0,
        [Debit(rich.address, 5_000), Debit(poor.address, 101)],
        [Credit(provider.address, 5_101)],
    )
    with pytest.raises(errors.InsufficientEscrow) as info:
        chain.client.settle_epoch(chain.admin, batch)
    assert info.value.args_by_name == {"buyer": poor.address, "available": 100, "requested": 101}
    assert chain.client.escrow(rich.address) == 10_000  # the first debit was undone too
    assert chain.client.earnings(provider.address) == 0


def test_credit_to_unknown_provider_reverts(chain: Chain) -> None:
    buyer, stranger = chain.buyer(100), chain.account()
    batch = EpochBatch(1, ROOT, 1, 0, [Debit(buyer.address, 100)], [Credit(stranger.address, 100)])
    with pytest.raises(errors.UnknownProvider):
        chain.client.settle_epoch(chain.admin, batch)


def test_fee_above_limit_and_reward_cap_revert(chain: Chain) -> None:
    buyer, provider = chain.buyer(1_000), chain.provider(KEY_A)
    greedy = EpochBatch(
        1, ROOT, 1, 101, [Debit(buyer.address, 1_000)], [Credit(provider.address, 899)]
    )
    with pytest.raises(errors.FeeExceedsLimit):
        chain.client.settle_epoch(chain.admin, greedy)
    lavish = EpochBatch(
        1, ROOT, 0, 0, rewards=[Credit(provider.address, PARAMS.epoch_reward_cap + 1)]
    )
    with pytest.raises(errors.RewardCapExceeded):
        chain.client.settle_epoch(chain.admin, lavish)


def test_settle_by_non_operator_reverts(chain: Chain) -> None:
    intruder = chain.account()
    with pytest.raises(errors.AccessControlUnauthorizedAccount) as info:
        chain.client.settle_epoch(intruder, EpochBatch(1, ROOT, 0, 0))
    assert info.value.args_by_name["account"] == intruder.address


def test_slash_needs_the_verifier_role_and_fresh_evidence(chain: Chain) -> None:
    provider, verifier = chain.provider(KEY_A), chain.account()
    evidence = bytes.fromhex("ee" * 32)
    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        chain.client.slash(verifier, provider.address, 10, evidence)

    chain.client.grant_role(chain.admin, VERIFIER_ROLE, verifier.address)
    supply = chain.client.network.functions.totalSupply().call()
    chain.client.slash(verifier, provider.address, 10**18, evidence)
    assert chain.client.stake_of(provider.address) == PARAMS.min_provider_stake - 10**18
    assert chain.client.network.functions.totalSupply().call() == supply - 10**18
    with pytest.raises(errors.EvidenceAlreadyUsed):
        chain.client.slash(verifier, provider.address, 1, evidence)
    with pytest.raises(errors.InsufficientStake):
        chain.client.slash(verifier, provider.address, 10**30, bytes(32))


def test_withdrawal_waits_for_the_delay_and_pays_what_is_left(chain: Chain) -> None:
    buyer, provider = chain.buyer(1_000), chain.provider(KEY_A)
    chain.client.request_withdrawal(buyer, 1_000)
    with pytest.raises(errors.ExitNotReady):
        chain.client.withdraw(buyer)
    # usage in flight settles before the withdrawal completes
    chain.client.settle_epoch(
        chain.admin,
        EpochBatch(1, ROOT, 1, 0, [Debit(buyer.address, 300)], [Credit(provider.address, 300)]),
    )
    advance_time(chain.w3, PARAMS.withdrawal_delay_s + 1)
    chain.client.withdraw(buyer)
    assert chain.client.payment_balance(buyer.address) == 700
    assert chain.client.escrow(buyer.address) == 0
    with pytest.raises(errors.NoPendingExit):
        chain.client.withdraw(buyer)


def test_escrows_are_read_in_order_across_calls(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settlement, "ESCROWS_PER_CALL", 2)
    funded, leaving = chain.buyer(1_000), chain.buyer(500)
    chain.client.request_withdrawal(leaving, 200)
    usable_at = chain.client.pending_withdrawal(leaving.address)[1]
    nobody = chain.account().address
    buyers = [leaving.address, nobody, funded.address]

    assert chain.client.escrows_of(buyers) == [(500, 200, usable_at), (0, 0, 0), (1_000, 0, 0)]
    assert chain.client.escrows_of([]) == []


def test_bad_amounts_and_registrations_revert(chain: Chain) -> None:
    someone = chain.account()
    with pytest.raises(errors.ZeroAmount):
        chain.client.request_withdrawal(someone, 0)
    with pytest.raises(errors.InsufficientEscrow):
        chain.client.request_withdrawal(someone, 1)
    with pytest.raises(errors.ZeroKey):
        chain.client.register_provider(someone, bytes(32))
    with pytest.raises(errors.UnknownProvider):
        chain.client.stake(someone, 1)
    chain.client.register_provider(someone, KEY_A)
    with pytest.raises(errors.ProviderAlreadyRegistered):
        chain.client.register_provider(someone, KEY_B)
    with pytest.raises(errors.SameKey):
        chain.client.rotate_provider_key(someone, KEY_A)
    with pytest.raises(errors.ZeroKey):
        chain.client.rotate_provider_key(someone, bytes(32))
    with pytest.raises(errors.UnknownProvider):
        chain.client.rotate_provider_key(chain.account(), KEY_B)
    receipt = chain.client.rotate_provider_key(someone, KEY_B)
    assert chain.client.provider_key(someone.address) == KEY_B
    [rotated] = chain.client.events(
        "ProviderKeyRotated", receipt["blockNumber"], receipt["blockNumber"]
    )
    assert (rotated.args["provider"], rotated.args["oldKey"], rotated.args["newKey"]) == (
        someone.address,
        KEY_A,
        KEY_B,
    )
    with pytest.raises(errors.NothingToWithdraw):
        chain.client.withdraw_earnings(someone)
    with pytest.raises(errors.FaucetAmountTooLarge):
        chain.client.faucet(someone, someone.address, PARAMS.faucet_max + 1)
    with pytest.raises(ValueError, match="32 bytes"):
        chain.client.register_provider(someone, b"short")


def test_pause_stops_deposits_settlement_and_escrow_exits(chain: Chain) -> None:
    buyer = chain.buyer(500)
    chain.client.request_withdrawal(buyer, 500)
    chain.client.set_paused(chain.admin, True)
    with pytest.raises(errors.EnforcedPause):
        chain.client.deposit(buyer, 1)
    with pytest.raises(errors.EnforcedPause):
        chain.client.settle_epoch(chain.admin, EpochBatch(1, ROOT, 0, 0))
    advance_time(chain.w3, PARAMS.withdrawal_delay_s + 1)
    with pytest.raises(errors.EnforcedPause):  # usage in flight cannot settle, so escrow stays
        chain.client.withdraw(buyer)
    chain.client.set_paused(chain.admin, False)
    # the pause used none of the delay: the epochs it held up settle before escrow leaves
    with pytest.raises(errors.ExitNotReady):
        chain.client.withdraw(buyer)
    advance_time(chain.w3, PARAMS.withdrawal_delay_s + 1)
    chain.client.withdraw(buyer)
    assert chain.client.payment_balance(buyer.address) == 500


def test_rewards_only_for_providers_with_the_minimum_stake(chain: Chain) -> None:
    staked, unstaked = chain.provider(KEY_A), chain.provider(KEY_B, stake=0)
    batch = EpochBatch(
        1, ROOT, 0, 0, rewards=[Credit(staked.address, 1), Credit(unstaked.address, 7)]
    )
    receipt = chain.client.settle_epoch(chain.admin, batch)  # the epoch settles all the same
    assert chain.client.network_balance(staked.address) == 1
    assert chain.client.network_balance(unstaked.address) == 0
    block = int(receipt["blockNumber"])
    assert chain.client.forfeited_rewards(1, block) == {unstaked.address: 7}
    assert chain.client.forfeited_rewards(2, block) == {}


def test_concurrent_sends_from_one_account_keep_nonces_straight(chain: Chain) -> None:
    buyer = chain.account()
    chain.client.faucet(buyer, buyer.address, 1_000)
    chain.client.payment.functions.approve  # noqa: B018 - contract loaded
    threads = [
        threading.Thread(target=chain.client.faucet, args=(buyer, buyer.address, 10))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert chain.client.payment_balance(buyer.address) == 1_060


@pytest.fixture
def sender(chain: Chain) -> Transactor:
    """A new account's sender that waits 1 s for a receipt; on anvil alone, since the
    in-process chain mines every transaction at once."""
    if is_embedded(chain.w3):
        pytest.skip("the in-process chain mines every transaction at once")
    return Transactor(chain.w3, chain.account().account, receipt_timeout_s=1)


def test_a_transaction_the_node_dropped_leaves_no_nonce_gap(
    chain: Chain, sender: Transactor
) -> None:
    chain.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        with pytest.raises(errors.TransactionFailed, match="not mined in time"):
            chain.client.faucet(sender, sender.address, 1)
        chain.w3.provider.make_request("anvil_dropAllTransactions", [])  # type: ignore[arg-type]
    finally:
        chain.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]

    chain.client.faucet(sender, sender.address, 2)
    chain.client.faucet(sender, sender.address, 3)
    assert chain.client.payment_balance(sender.address) == 5


@contextmanager
def _waiting(chain: Chain, sender: Transactor) -> Iterator[dict[str, Any]]:
    """A mint of 1 from `sender` waits in the node's pool, not mined (as one priced below the
    base fee would) while the block runs; the next block is mined only once the pool holds
    something else from `sender` (a replacement, or a second transaction behind it)."""
    with automine_off(chain.w3):
        with pytest.raises(errors.TransactionFailed, match="not mined in time"):
            chain.client.faucet(sender, sender.address, 1)
        (waiting,) = pooled(chain.w3, sender.address)
        assert chain.w3.eth.get_transaction_count(sender.account.address) == 0
        assert chain.w3.eth.get_transaction_count(sender.account.address, "pending") == 1
        with mining_once_replaced(chain.w3, sender.address, waiting["hash"]):
            yield waiting


def test_a_replacing_send_takes_the_place_of_a_transaction_still_waiting(
    chain: Chain, sender: Transactor
) -> None:
    with _waiting(chain, sender) as waiting:
        sender.receipt_timeout_s = 10
        minted = sender.transact(
            chain.client.payment.functions.faucet(sender.address, 2), replace_pending=True
        )
    tx = chain.w3.eth.get_transaction(minted["transactionHash"])
    assert tx["nonce"] == 0  # in the waiting one's place
    assert tx["maxFeePerGas"] >= int(waiting["maxFeePerGas"], 16) * 125 // 100
    assert chain.client.payment_balance(sender.address) == 2  # the waiting mint never ran
    chain.client.faucet(sender, sender.address, 3)  # later sends go on from there
    assert chain.client.payment_balance(sender.address) == 5


def test_a_replacement_outbids_fees_it_does_not_know(chain: Chain, sender: Transactor) -> None:
    with _waiting(chain, sender):
        restarted = Transactor(chain.w3, sender.account, receipt_timeout_s=10)  # knows nothing
        restarted.transact(
            chain.client.payment.functions.faucet(sender.address, 7), replace_pending=True
        )
    assert chain.client.payment_balance(sender.address) == 7
    assert chain.w3.eth.get_transaction_count(sender.account.address) == 1
