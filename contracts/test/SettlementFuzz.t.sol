// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {Base} from "./Base.t.sol";
import {MerkleBuilder} from "./utils/Merkle.sol";

/// Property tests: every input is clamped with `bound` into what the contract accepts (or just
/// past it, where the property is the revert).
contract SettlementFuzzTest is Base {
    uint256 internal constant NB = 4; // buyers
    uint256 internal constant NP = 3; // providers

    address[NB] internal buyers;
    address[NP] internal providers;

    function setUp() public override {
        super.setUp();
        buyers = [alice, bob, makeAddr("carol"), makeAddr("dave")];
        providers = [prov1, prov2, makeAddr("prov3")];
        _fundBuyer(buyers[2], BUYER_FUNDS);
        _fundBuyer(buyers[3], BUYER_FUNDS);
        _fundProvider(providers[2], PROVIDER_NET);
        for (uint256 i; i < NP; ++i) {
            _register(providers[i], keccak256(abi.encode("key", i)));
            _stake(providers[i], MIN_STAKE);
        }
    }

    /// Any deposits, any debits within escrow, any fee within the limit and any split of the
    /// rest among providers: value is conserved to the unit, per account and in total.
    function testFuzz_settle_conservesValue(
        uint256[NB] memory deposits,
        uint256[NB] memory debits,
        uint256 feeSeed,
        uint256[NP] memory weights,
        uint256 rewardSeed
    ) public {
        ISettlement.EpochBatch memory b = _fuzzBatch(deposits, debits, feeSeed, weights, rewardSeed);
        uint256 held = usd.balanceOf(address(settlement));
        uint256 supply = net.totalSupply();
        _settle(b);

        uint256 debited;
        for (uint256 i; i < NB; ++i) {
            assertEq(settlement.escrow(buyers[i]), deposits[i] - debits[i], "buyer escrow");
            debited += debits[i];
        }
        uint256 credited;
        for (uint256 j; j < NP; ++j) {
            assertEq(settlement.earnings(providers[j]), b.credits[j].amount, "provider earnings");
            credited += b.credits[j].amount;
        }
        assertEq(credited + b.fee, debited);
        assertEq(settlement.totalDebited(), debited);
        assertEq(settlement.totalCredited(), credited);
        assertEq(settlement.accruedFees(), b.fee);
        assertEq(usd.balanceOf(address(settlement)), held, "settlement moves no tokens");
        assertEq(net.totalSupply(), supply + b.rewards[0].amount);
        _assertSolvent();

        _everyoneLeaves(b.fee > 0);
    }

    /// Deposits for every buyer, and a balanced batch over them (deposits and debits clamped in
    /// place, so the caller sees the values used).
    function _fuzzBatch(
        uint256[NB] memory deposits,
        uint256[NB] memory debits,
        uint256 feeSeed,
        uint256[NP] memory weights,
        uint256 rewardSeed
    ) internal returns (ISettlement.EpochBatch memory b) {
        uint256 debited;
        b = _emptyBatch(1);
        b.debits = new ISettlement.Debit[](NB);
        for (uint256 i; i < NB; ++i) {
            deposits[i] = bound(deposits[i], 1, BUYER_FUNDS);
            _deposit(buyers[i], deposits[i]);
            debits[i] = bound(debits[i], 0, deposits[i]);
            b.debits[i] = ISettlement.Debit(buyers[i], debits[i]);
            debited += debits[i];
        }
        b.fee = bound(feeSeed, 0, _feeLimit(debited));
        b.credits = _split(debited - b.fee, weights);
        b.rewards = new ISettlement.Credit[](1);
        b.rewards[0] = ISettlement.Credit(providers[rewardSeed % NP], bound(rewardSeed, 0, EPOCH_MINT_CAP));
    }

    /// `amount` split among the providers by `weights`; the last takes the rounding rest.
    function _split(uint256 amount, uint256[NP] memory weights)
        internal
        view
        returns (ISettlement.Credit[] memory credits)
    {
        uint256 weightSum;
        for (uint256 j; j < NP; ++j) {
            weights[j] = bound(weights[j], 0, 1e6);
            weightSum += weights[j];
        }
        credits = new ISettlement.Credit[](NP);
        uint256 credited;
        for (uint256 j; j < NP; ++j) {
            uint256 c = j + 1 == NP ? amount - credited : (weightSum == 0 ? 0 : amount * weights[j] / weightSum);
            credits[j] = ISettlement.Credit(providers[j], c);
            credited += c;
        }
    }

    /// Providers, treasury and buyers take everything out: no unit is stuck, created or lost.
    function _everyoneLeaves(bool withFees) internal {
        for (uint256 j; j < NP; ++j) {
            if (settlement.earnings(providers[j]) == 0) continue;
            vm.prank(providers[j]);
            settlement.withdrawEarnings();
        }
        if (withFees) {
            vm.prank(admin);
            settlement.withdrawFees(treasury);
        }
        for (uint256 i; i < NB; ++i) {
            uint256 left = settlement.escrow(buyers[i]);
            if (left == 0) continue;
            vm.prank(buyers[i]);
            settlement.requestWithdrawal(left);
        }
        vm.warp(block.timestamp + WITHDRAWAL_DELAY);
        for (uint256 i; i < NB; ++i) {
            if (settlement.escrow(buyers[i]) == 0) continue;
            vm.prank(buyers[i]);
            settlement.withdraw();
        }
        assertEq(usd.balanceOf(address(settlement)), 0, "nothing stuck");
        uint256 total = usd.balanceOf(treasury);
        for (uint256 i; i < NB; ++i) {
            total += usd.balanceOf(buyers[i]);
        }
        for (uint256 j; j < NP; ++j) {
            total += usd.balanceOf(providers[j]);
        }
        assertEq(total, NB * BUYER_FUNDS, "no unit created or lost");
        _assertSolvent();
    }

    /// A batch whose debits differ from credits plus fee reverts whole.
    function testFuzz_settle_rejectsUnbalanced(uint256 debit, uint256 credit, uint256 fee) public {
        debit = bound(debit, 0, BUYER_FUNDS);
        credit = bound(credit, 0, BUYER_FUNDS);
        fee = bound(fee, 0, _feeLimit(BUYER_FUNDS));
        vm.assume(debit != credit + fee);
        _deposit(alice, BUYER_FUNDS);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, credit, fee);
        b.debits[0].amount = debit;
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnbalancedBatch.selector, debit, credit, fee));
        settlement.settleEpoch(b);
        assertEq(settlement.lastSettledEpoch(), 0);
        assertEq(settlement.escrow(alice), BUYER_FUNDS);
    }

    /// The fee may be anything up to maxFeeBps of the debits, rounded down, and no more.
    function testFuzz_settle_feeLimit(uint256 debit, uint256 fee) public {
        debit = bound(debit, 0, BUYER_FUNDS);
        fee = bound(fee, 0, debit);
        _deposit(alice, BUYER_FUNDS);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, debit - fee, fee);
        uint256 limit = debit * MAX_FEE_BPS / 10_000;
        if (fee > limit) {
            vm.prank(operator);
            vm.expectRevert(abi.encodeWithSelector(ISettlement.FeeExceedsLimit.selector, fee, limit));
            settlement.settleEpoch(b);
        } else {
            _settle(b);
            assertEq(settlement.accruedFees(), fee);
            assertLe(fee * 10_000, debit * MAX_FEE_BPS);
        }
    }

    /// A debit beyond escrow reverts with what was available.
    function testFuzz_settle_debitBeyondEscrowReverts(uint256 escrowAmount, uint256 debit) public {
        escrowAmount = bound(escrowAmount, 1, BUYER_FUNDS);
        debit = bound(debit, escrowAmount + 1, type(uint128).max);
        _deposit(alice, escrowAmount);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, debit, 0);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, alice, escrowAmount, debit));
        settlement.settleEpoch(b);
    }

    /// Withdrawal requested, then an epoch debits part of the escrow: the buyer gets
    /// min(requested, what is left), and the debit is never paid twice.
    function testFuzz_withdraw_afterPartialDebit(
        uint256 depositAmount,
        uint256 requested,
        uint256 debit,
        uint256 feeSeed
    ) public {
        depositAmount = bound(depositAmount, 1, BUYER_FUNDS);
        requested = bound(requested, 1, depositAmount);
        debit = bound(debit, 0, depositAmount);
        uint256 fee = bound(feeSeed, 0, _feeLimit(debit));
        _deposit(alice, depositAmount);
        vm.prank(alice);
        settlement.requestWithdrawal(requested);
        _settle(_simpleBatch(1, alice, prov1, debit - fee, fee));

        vm.warp(block.timestamp + WITHDRAWAL_DELAY);
        uint256 left = depositAmount - debit;
        uint256 expected = requested < left ? requested : left;
        vm.prank(alice);
        if (expected == 0) {
            vm.expectRevert(abi.encodeWithSelector(ISettlement.NothingToWithdraw.selector, alice));
            settlement.withdraw();
        } else {
            settlement.withdraw();
        }
        assertEq(usd.balanceOf(alice), BUYER_FUNDS - depositAmount + expected, "paid out");
        assertEq(settlement.escrow(alice), left - expected, "escrow left");
        assertEq(usd.balanceOf(alice) + settlement.escrow(alice) + debit, BUYER_FUNDS);
        _assertSolvent();
    }

    /// Slashing takes at most the stake, however many slashes and whatever is leaving.
    function testFuzz_slash_neverExceedsStake(uint256 stakeAmount, uint256 unstakeAmount, uint256[4] memory slashes)
        public
    {
        address p = providers[2];
        stakeAmount = bound(stakeAmount, 1, PROVIDER_NET - MIN_STAKE);
        _stake(p, stakeAmount);
        uint256 staked = MIN_STAKE + stakeAmount;
        unstakeAmount = bound(unstakeAmount, 1, staked);
        vm.prank(p);
        settlement.requestUnstake(unstakeAmount);

        uint256 burnt;
        for (uint256 k; k < slashes.length; ++k) {
            uint256 amount = bound(slashes[k], 1, staked); // may be more than what is left
            uint256 remaining = staked - burnt;
            bytes32 evidence = keccak256(abi.encode("evidence", k));
            vm.prank(verifier);
            if (amount > remaining) {
                vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientStake.selector, p, remaining, amount));
                settlement.slash(p, amount, evidence);
            } else {
                settlement.slash(p, amount, evidence);
                burnt += amount;
            }
            assertEq(settlement.stakeOf(p), staked - burnt, "stake after slash");
            assertLe(burnt, staked);
        }
        assertEq(net.totalSupply(), GENESIS_SUPPLY - burnt, "slashed stake is burnt");
        _assertSolvent();

        // The pending unstake pays what is left of it.
        vm.warp(block.timestamp + UNSTAKE_DELAY);
        uint256 left = staked - burnt;
        uint256 expected = unstakeAmount < left ? unstakeAmount : left;
        uint256 before = net.balanceOf(p);
        vm.prank(p);
        if (expected == 0) {
            vm.expectRevert(abi.encodeWithSelector(ISettlement.NothingToWithdraw.selector, p));
            settlement.completeUnstake();
        } else {
            settlement.completeUnstake();
        }
        assertEq(net.balanceOf(p), before + expected);
        assertEq(settlement.stakeOf(p), left - expected);
        _assertSolvent();
    }

    /// Rotating to any nonzero key other than the bound one binds it and leaves the stake and the
    /// provider's standing alone; rotating to zero or to the bound key reverts and binds nothing.
    function testFuzz_rotateProviderKey(uint256 who, bytes32 newKey, uint8 mode) public {
        address p = providers[who % NP];
        bytes32 oldKey = settlement.providerKey(p);
        mode = uint8(bound(mode, 0, 3));
        if (mode == 1) newKey = bytes32(0);
        else if (mode == 2) newKey = oldKey;
        uint256 staked = settlement.stakeOf(p);
        bool active = settlement.isActiveProvider(p);
        assertTrue(active);

        vm.prank(p);
        if (newKey == bytes32(0)) {
            vm.expectRevert(ISettlement.ZeroKey.selector);
            settlement.rotateProviderKey(newKey);
            assertEq(settlement.providerKey(p), oldKey, "a zero key binds nothing");
        } else if (newKey == oldKey) {
            vm.expectRevert(abi.encodeWithSelector(ISettlement.SameKey.selector, oldKey));
            settlement.rotateProviderKey(newKey);
            assertEq(settlement.providerKey(p), oldKey, "the bound key stays");
        } else {
            vm.expectEmit(address(settlement));
            emit ISettlement.ProviderKeyRotated(p, oldKey, newKey);
            settlement.rotateProviderKey(newKey);
            assertEq(settlement.providerKey(p), newKey, "the new key is bound");
        }
        assertEq(settlement.stakeOf(p), staked, "stake");
        assertEq(settlement.totalStaked(), NP * MIN_STAKE, "total stake");
        assertEq(settlement.isActiveProvider(p), active, "active");
        for (uint256 j; j < NP; ++j) {
            if (providers[j] == p) continue;
            assertEq(settlement.providerKey(providers[j]), keccak256(abi.encode("key", j)), "other keys");
        }
        _assertSolvent();
    }

    /// Rewards of one epoch are accepted up to the mint cap and rejected beyond it.
    function testFuzz_settle_rewardCap(uint256[NP] memory rewards) public {
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.rewards = new ISettlement.Credit[](NP);
        uint256 total;
        for (uint256 j; j < NP; ++j) {
            rewards[j] = bound(rewards[j], 0, EPOCH_MINT_CAP / 2);
            b.rewards[j] = ISettlement.Credit(providers[j], rewards[j]);
            total += rewards[j];
        }
        uint256 supply = net.totalSupply();
        if (total > EPOCH_MINT_CAP) {
            vm.prank(operator);
            vm.expectRevert(abi.encodeWithSelector(ISettlement.RewardCapExceeded.selector, total, EPOCH_MINT_CAP));
            settlement.settleEpoch(b);
            assertEq(net.totalSupply(), supply);
        } else {
            _settle(b);
            assertEq(net.totalSupply(), supply + total);
            assertEq(net.mintedInEpoch(1), total);
        }
    }

    /// Epochs settle only as lastSettledEpoch + 1.
    function testFuzz_settle_onlyNextEpoch(uint8 settledFirst, uint64 epoch) public {
        uint64 settled = uint64(bound(settledFirst, 0, 5));
        for (uint64 e = 1; e <= settled; ++e) {
            _settle(_emptyBatch(e));
        }
        ISettlement.EpochBatch memory b = _emptyBatch(epoch);
        if (epoch <= settled) {
            vm.prank(operator);
            vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochAlreadySettled.selector, epoch));
            settlement.settleEpoch(b);
        } else if (epoch > settled + 1) {
            vm.prank(operator);
            vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, settled + 1, epoch));
            settlement.settleEpoch(b);
        } else {
            _settle(b);
        }
        assertEq(settlement.lastSettledEpoch(), epoch == settled + 1 ? epoch : settled);
    }

    /// Every receipt of a tree of any size proves; a receipt not in it does not.
    function testFuzz_verifyReceipt(uint256 size, uint256 salt, uint256 index, bytes32 outsider) public {
        size = bound(size, 1, 33);
        index = bound(index, 0, size - 1);
        bytes32[] memory r = new bytes32[](size);
        for (uint256 i; i < size; ++i) {
            r[i] = keccak256(abi.encode(salt, i));
            vm.assume(r[i] != outsider);
        }
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.receiptsRoot = MerkleBuilder.root(r);
        // forge-lint: disable-next-line(unsafe-typecast)
        b.receiptCount = uint64(size);
        _settle(b);
        bytes32[] memory proof = MerkleBuilder.proof(r, index);
        assertTrue(settlement.verifyReceipt(1, r[index], proof));
        assertFalse(settlement.verifyReceipt(1, outsider, proof));
    }
}
