// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {NetworkToken} from "../src/NetworkToken.sol";
import {PaymentToken} from "../src/PaymentToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {INetworkToken} from "../src/interfaces/INetworkToken.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {Base} from "./Base.t.sol";
import {MerkleBuilder} from "./utils/Merkle.sol";

contract SettlementTest is Base {
    // =========================================================================================
    // Deployment
    // =========================================================================================

    function test_constructor_setsConfigAndRoles() public view {
        assertEq(address(settlement.paymentToken()), address(usd));
        assertEq(address(settlement.networkToken()), address(net));
        assertEq(settlement.withdrawalDelay(), WITHDRAWAL_DELAY);
        assertEq(settlement.unstakeDelay(), UNSTAKE_DELAY);
        assertEq(settlement.minProviderStake(), MIN_STAKE);
        assertEq(settlement.maxFeeBps(), MAX_FEE_BPS);
        assertEq(settlement.lastSettledEpoch(), 0);
        assertTrue(settlement.hasRole(DEFAULT_ADMIN_ROLE, admin));
        assertTrue(settlement.hasRole(OPERATOR_ROLE, operator));
        assertTrue(settlement.hasRole(VERIFIER_ROLE, verifier));
        assertTrue(settlement.hasRole(PAUSER_ROLE, pauser));
        assertEq(net.minter(), address(settlement));
    }

    function test_constructor_grantsEveryRoleToAdmin() public {
        Settlement fresh = new Settlement(admin, usd, net, _config());
        assertTrue(fresh.hasRole(DEFAULT_ADMIN_ROLE, admin));
        assertTrue(fresh.hasRole(OPERATOR_ROLE, admin));
        assertTrue(fresh.hasRole(VERIFIER_ROLE, admin));
        assertTrue(fresh.hasRole(PAUSER_ROLE, admin));
    }

    function test_constructor_revertsOnZeroAdmin() public {
        vm.expectRevert(ISettlement.ZeroAddress.selector);
        new Settlement(address(0), usd, net, _config());
    }

    function test_constructor_revertsOnZeroPaymentToken() public {
        vm.expectRevert(ISettlement.ZeroAddress.selector);
        new Settlement(admin, IERC20(address(0)), net, _config());
    }

    function test_constructor_revertsOnZeroNetworkToken() public {
        vm.expectRevert(ISettlement.ZeroAddress.selector);
        new Settlement(admin, usd, INetworkToken(address(0)), _config());
    }

    function test_constructor_revertsOnFeeAboveWhole() public {
        Settlement.Config memory config = _config();
        config.maxFeeBps = 10_001;
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidConfig.selector, "maxFeeBps"));
        new Settlement(admin, usd, net, config);
    }

    function test_constructor_revertsOnDelaysOutOfRange() public {
        Settlement.Config memory config = _config();
        config.withdrawalDelay = 0;
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidConfig.selector, "withdrawalDelay"));
        new Settlement(admin, usd, net, config);
        config.withdrawalDelay = 365 days + 1;
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidConfig.selector, "withdrawalDelay"));
        new Settlement(admin, usd, net, config);

        config = _config();
        config.unstakeDelay = 0;
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidConfig.selector, "unstakeDelay"));
        new Settlement(admin, usd, net, config);
        config.unstakeDelay = type(uint64).max;
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidConfig.selector, "unstakeDelay"));
        new Settlement(admin, usd, net, config);

        config = _config();
        config.minRewardInterval = 365 days + 1;
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InvalidConfig.selector, "minRewardInterval"));
        new Settlement(admin, usd, net, config);
    }

    function test_constructor_acceptsTheLongestDelays() public {
        Settlement.Config memory config = _config();
        (config.withdrawalDelay, config.unstakeDelay, config.minRewardInterval) = (365 days, 365 days, 365 days);
        Settlement longest = new Settlement(admin, usd, net, config);
        assertEq(longest.unstakeDelay(), 365 days);
    }

    function test_constructor_acceptsWholeFee() public {
        Settlement.Config memory config = _config();
        config.maxFeeBps = 10_000;
        assertEq(new Settlement(admin, usd, net, config).maxFeeBps(), 10_000);
    }

    // =========================================================================================
    // Deposits
    // =========================================================================================

    function test_deposit_movesTokensIntoEscrow() public {
        vm.expectEmit(address(settlement));
        emit ISettlement.Deposited(alice, alice, 250e6, 250e6);
        vm.expectEmit(address(usd));
        emit IERC20.Transfer(alice, address(settlement), 250e6);
        _deposit(alice, 250e6);

        assertEq(settlement.escrow(alice), 250e6);
        assertEq(settlement.totalEscrow(), 250e6);
        assertEq(usd.balanceOf(address(settlement)), 250e6);
        assertEq(usd.balanceOf(alice), BUYER_FUNDS - 250e6);
        _assertSolvent();
    }

    function test_deposit_accumulates() public {
        _deposit(alice, 100e6);
        vm.expectEmit(address(settlement));
        emit ISettlement.Deposited(alice, alice, 50e6, 150e6);
        _deposit(alice, 50e6);
        _deposit(bob, 7e6);
        assertEq(settlement.escrow(alice), 150e6);
        assertEq(settlement.escrow(bob), 7e6);
        assertEq(settlement.totalEscrow(), 157e6);
        _assertSolvent();
    }

    function test_depositFor_creditsBuyerAndChargesPayer() public {
        vm.expectEmit(address(settlement));
        emit ISettlement.Deposited(stranger, bob, 40e6, 40e6);
        vm.prank(bob);
        settlement.depositFor(stranger, 40e6);

        assertEq(settlement.escrow(stranger), 40e6);
        assertEq(settlement.escrow(bob), 0);
        assertEq(usd.balanceOf(bob), BUYER_FUNDS - 40e6);
        _assertSolvent();
    }

    function test_deposit_revertsOnZeroAmount() public {
        vm.expectRevert(ISettlement.ZeroAmount.selector);
        _deposit(alice, 0);
    }

    function test_depositFor_revertsOnZeroAmount() public {
        vm.prank(alice);
        vm.expectRevert(ISettlement.ZeroAmount.selector);
        settlement.depositFor(bob, 0);
    }

    function test_depositFor_revertsOnZeroBuyer() public {
        vm.prank(alice);
        vm.expectRevert(ISettlement.ZeroAddress.selector);
        settlement.depositFor(address(0), 1e6);
    }

    function test_deposit_revertsWhenPaused() public {
        vm.prank(pauser);
        settlement.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        _deposit(alice, 1e6);
        vm.prank(alice);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        settlement.depositFor(bob, 1e6);
    }

    function test_deposit_revertsWithoutAllowance() public {
        usd.faucet(stranger, 10e6);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(settlement), 0, 10e6)
        );
        _deposit(stranger, 10e6);
        assertEq(settlement.escrow(stranger), 0);
    }

    function test_deposit_revertsBeyondBalance() public {
        vm.prank(stranger);
        usd.approve(address(settlement), type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, stranger, 0, 1));
        _deposit(stranger, 1);
    }

    // =========================================================================================
    // Withdrawals
    // =========================================================================================

    function test_requestWithdrawal_recordsPendingExit() public {
        _deposit(alice, 100e6);
        uint64 availableAt = uint64(block.timestamp) + WITHDRAWAL_DELAY;
        vm.expectEmit(address(settlement));
        emit ISettlement.WithdrawalRequested(alice, 60e6, availableAt);
        vm.prank(alice);
        settlement.requestWithdrawal(60e6);

        (uint192 amount, uint64 availableAt_) = settlement.pendingWithdrawal(alice);
        assertEq(amount, 60e6);
        assertEq(availableAt_, availableAt);
        // Escrow stays debitable until the withdrawal completes.
        assertEq(settlement.escrow(alice), 100e6);
    }

    function test_requestWithdrawal_replacesEarlierRequestAndRestartsClock() public {
        _deposit(alice, 100e6);
        vm.prank(alice);
        settlement.requestWithdrawal(10e6);
        vm.warp(block.timestamp + 12 hours);
        vm.prank(alice);
        settlement.requestWithdrawal(90e6);
        (uint192 amount, uint64 availableAt_) = settlement.pendingWithdrawal(alice);
        assertEq(amount, 90e6);
        assertEq(availableAt_, uint64(block.timestamp) + WITHDRAWAL_DELAY);
    }

    function test_requestWithdrawal_revertsOnZeroAmount() public {
        _deposit(alice, 100e6);
        vm.prank(alice);
        vm.expectRevert(ISettlement.ZeroAmount.selector);
        settlement.requestWithdrawal(0);
    }

    function test_requestWithdrawal_revertsBeyondEscrow() public {
        _deposit(alice, 100e6);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, alice, 100e6, 100e6 + 1));
        settlement.requestWithdrawal(100e6 + 1);
    }

    function test_requestWithdrawal_revertsWithoutEscrow() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, stranger, 0, 1));
        settlement.requestWithdrawal(1);
    }

    function test_deposit_revertsWhenTotalEscrowWouldPass128Bits() public {
        // The running totals are 128-bit: deploy a token big enough to reach the limit.
        uint256 limit = type(uint128).max;
        PaymentToken bigUsd = new PaymentToken("Big", "BIG", false, 0, alice, limit + 2);
        Settlement s = new Settlement(admin, bigUsd, net, _config());
        vm.startPrank(alice);
        bigUsd.approve(address(s), limit + 2);
        s.deposit(limit - 1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.AmountTooLarge.selector, limit + 1));
        s.deposit(2);
        s.deposit(1); // the largest total that fits
        vm.stopPrank();
        assertEq(s.totalEscrow(), limit);
        assertEq(s.escrow(alice), limit);
    }

    function test_requestWithdrawal_allowedWhenPaused() public {
        _deposit(alice, 100e6);
        vm.prank(pauser);
        settlement.pause();
        vm.prank(alice);
        settlement.requestWithdrawal(100e6);
        vm.warp(block.timestamp + WITHDRAWAL_DELAY);
        // usage in flight cannot settle while paused, so escrow cannot leave either
        vm.prank(alice);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        settlement.withdraw();
        vm.prank(pauser);
        settlement.unpause();
        // nor the moment the pause ends: the epochs it held up settle first
        uint64 readyAt = uint64(block.timestamp) + WITHDRAWAL_DELAY;
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ExitNotReady.selector, alice, readyAt));
        settlement.withdraw();
        vm.warp(readyAt);
        vm.prank(alice);
        settlement.withdraw();
        assertEq(usd.balanceOf(alice), BUYER_FUNDS);
    }

    function test_withdraw_paysAfterDelay() public {
        _deposit(alice, 100e6);
        vm.prank(alice);
        settlement.requestWithdrawal(30e6);
        vm.warp(block.timestamp + WITHDRAWAL_DELAY);

        vm.expectEmit(address(settlement));
        emit ISettlement.Withdrawn(alice, 30e6);
        vm.expectEmit(address(usd));
        emit IERC20.Transfer(address(settlement), alice, 30e6);
        vm.prank(alice);
        settlement.withdraw();

        assertEq(settlement.escrow(alice), 70e6);
        assertEq(settlement.totalEscrow(), 70e6);
        assertEq(usd.balanceOf(alice), BUYER_FUNDS - 70e6);
        (uint192 amount, uint64 availableAt_) = settlement.pendingWithdrawal(alice);
        assertEq(amount, 0);
        assertEq(availableAt_, 0);
        _assertSolvent();
    }

    function test_withdraw_revertsWithoutPendingExit() public {
        _deposit(alice, 100e6);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NoPendingExit.selector, alice));
        settlement.withdraw();
    }

    function test_withdraw_revertsWhenRepeated() public {
        _deposit(alice, 100e6);
        vm.prank(alice);
        settlement.requestWithdrawal(30e6);
        vm.warp(block.timestamp + WITHDRAWAL_DELAY);
        vm.startPrank(alice);
        settlement.withdraw();
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NoPendingExit.selector, alice));
        settlement.withdraw();
        vm.stopPrank();
    }

    function test_withdraw_revertsBeforeDelay() public {
        _deposit(alice, 100e6);
        vm.prank(alice);
        settlement.requestWithdrawal(100e6);
        uint64 availableAt = uint64(block.timestamp) + WITHDRAWAL_DELAY;

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ExitNotReady.selector, alice, availableAt));
        settlement.withdraw();

        vm.warp(availableAt - 1); // one second short
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ExitNotReady.selector, alice, availableAt));
        settlement.withdraw();

        vm.warp(availableAt); // ready from `availableAt` on
        vm.prank(alice);
        settlement.withdraw();
        assertEq(settlement.escrow(alice), 0);
    }

    function test_withdraw_revertsWhenEscrowWasDebitedAway() public {
        _market(100e6, 0);
        vm.prank(alice);
        settlement.requestWithdrawal(100e6);
        _settle(_simpleBatch(1, alice, prov1, 95e6, 5e6)); // the whole escrow
        vm.warp(block.timestamp + WITHDRAWAL_DELAY);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NothingToWithdraw.selector, alice));
        settlement.withdraw();
    }

    /// A withdrawal pending while an epoch debits the buyer pays out only what is left.
    function test_withdraw_pendingDuringDebitPaysOnlyWhatIsLeft() public {
        _market(100e6, 0);
        vm.prank(alice);
        settlement.requestWithdrawal(100e6);

        // The operator settles 60 of Alice's escrow before her exit is ready.
        _settle(_simpleBatch(1, alice, prov1, 57e6, 3e6));
        assertEq(settlement.escrow(alice), 40e6);

        vm.warp(block.timestamp + WITHDRAWAL_DELAY);
        vm.expectEmit(address(settlement));
        emit ISettlement.Withdrawn(alice, 40e6);
        vm.prank(alice);
        settlement.withdraw();

        assertEq(settlement.escrow(alice), 0);
        assertEq(usd.balanceOf(alice), BUYER_FUNDS - 60e6);
        assertEq(settlement.earnings(prov1), 57e6);
        assertEq(settlement.accruedFees(), 3e6);
        (, uint64 availableAt_) = settlement.pendingWithdrawal(alice);
        assertEq(availableAt_, 0, "the pending exit is cleared");
        _assertSolvent();
    }

    function test_withdraw_pendingBelowWhatIsLeftPaysInFull() public {
        _market(100e6, 0);
        vm.prank(alice);
        settlement.requestWithdrawal(30e6);
        _settle(_simpleBatch(1, alice, prov1, 57e6, 3e6)); // 40 left, 30 pending
        vm.warp(block.timestamp + WITHDRAWAL_DELAY);
        vm.prank(alice);
        settlement.withdraw();
        assertEq(settlement.escrow(alice), 10e6);
        assertEq(usd.balanceOf(alice), BUYER_FUNDS - 70e6);
        _assertSolvent();
    }

    function test_withdraw_depositAfterRequestDoesNotGrowExit() public {
        _deposit(alice, 100e6);
        vm.prank(alice);
        settlement.requestWithdrawal(50e6);
        _deposit(alice, 100e6);
        vm.warp(block.timestamp + WITHDRAWAL_DELAY);
        vm.prank(alice);
        settlement.withdraw();
        assertEq(settlement.escrow(alice), 150e6);
    }

    function test_escrowsOf_readsEachBuyerInOrder() public {
        _deposit(alice, 100e6);
        _deposit(bob, 40e6);
        vm.prank(alice);
        settlement.requestWithdrawal(30e6);
        address[] memory buyers = new address[](3);
        buyers[0] = bob;
        buyers[1] = stranger;
        buyers[2] = alice;

        (uint256[] memory escrows, ISettlement.PendingExit[] memory withdrawals) = settlement.escrowsOf(buyers);

        assertEq(escrows.length, 3);
        assertEq(withdrawals.length, 3);
        assertEq(escrows[0], 40e6);
        assertEq(escrows[1], 0);
        assertEq(escrows[2], 100e6);
        assertEq(withdrawals[0].amount, 0);
        assertEq(withdrawals[0].availableAt, 0);
        assertEq(withdrawals[1].amount, 0);
        assertEq(withdrawals[2].amount, 30e6);
        assertEq(withdrawals[2].availableAt, uint64(block.timestamp) + WITHDRAWAL_DELAY);
    }

    function test_escrowsOf_emptyListReturnsEmptyArrays() public view {
        (uint256[] memory escrows, ISettlement.PendingExit[] memory withdrawals) =
            settlement.escrowsOf(new address[](0));
        assertEq(escrows.length, 0);
        assertEq(withdrawals.length, 0);
    }

    // =========================================================================================
    // Providers: registration and stake
    // =========================================================================================

    function test_registerProvider_bindsKey() public {
        vm.expectEmit(address(settlement));
        emit ISettlement.ProviderRegistered(prov1, KEY_1);
        _register(prov1, KEY_1);
        assertEq(settlement.providerKey(prov1), KEY_1);
        assertFalse(settlement.isActiveProvider(prov1), "registered without stake is not active");
    }

    function test_registerProvider_revertsOnZeroKey() public {
        vm.prank(prov1);
        vm.expectRevert(ISettlement.ZeroKey.selector);
        settlement.registerProvider(bytes32(0));
    }

    function test_registerProvider_revertsOnDoubleRegistration() public {
        _register(prov1, KEY_1);
        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ProviderAlreadyRegistered.selector, prov1));
        settlement.registerProvider(KEY_2);
        assertEq(settlement.providerKey(prov1), KEY_1, "the first key stays");
    }

    function test_registerProvider_revertsWhenPaused() public {
        vm.prank(pauser);
        settlement.pause();
        vm.prank(prov1);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        settlement.registerProvider(KEY_1);
    }

    function test_rotateProviderKey_bindsNewKey() public {
        _register(prov1, KEY_1);
        vm.expectEmit(address(settlement));
        emit ISettlement.ProviderKeyRotated(prov1, KEY_1, KEY_2);
        vm.prank(prov1);
        settlement.rotateProviderKey(KEY_2);
        assertEq(settlement.providerKey(prov1), KEY_2);
        assertFalse(settlement.isActiveProvider(prov1), "rotation does not activate");
    }

    function test_rotateProviderKey_revertsForUnregisteredCaller() public {
        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownProvider.selector, prov1));
        settlement.rotateProviderKey(KEY_1);
        assertEq(settlement.providerKey(prov1), bytes32(0), "rotation does not register");
    }

    function test_rotateProviderKey_revertsOnZeroKey() public {
        _register(prov1, KEY_1);
        vm.prank(prov1);
        vm.expectRevert(ISettlement.ZeroKey.selector);
        settlement.rotateProviderKey(bytes32(0));
        assertEq(settlement.providerKey(prov1), KEY_1, "the bound key stays");
    }

    function test_rotateProviderKey_revertsOnSameKey() public {
        _register(prov1, KEY_1);
        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.SameKey.selector, KEY_1));
        settlement.rotateProviderKey(KEY_1);
        assertEq(settlement.providerKey(prov1), KEY_1);
    }

    function test_rotateProviderKey_allowedWhenPaused() public {
        _register(prov1, KEY_1);
        vm.prank(pauser);
        settlement.pause();
        // a leaked key must be replaceable while the contract is paused
        vm.expectEmit(address(settlement));
        emit ISettlement.ProviderKeyRotated(prov1, KEY_1, KEY_2);
        vm.prank(prov1);
        settlement.rotateProviderKey(KEY_2);
        assertEq(settlement.providerKey(prov1), KEY_2);
    }

    function test_rotateProviderKey_keepsStakeEarningsAndActivity() public {
        _market(100e6, 0);
        _stake(prov1, 500e18);
        vm.prank(prov1);
        settlement.requestUnstake(200e18);
        _settle(_simpleBatch(1, alice, prov1, 57e6, 3e6));
        assertTrue(settlement.isActiveProvider(prov1));
        uint256 staked = settlement.stakeOf(prov1);
        (uint192 pending, uint64 availableAt) = settlement.pendingUnstake(prov1);

        bytes32 newKey = keccak256("provider-1 rotated ed25519 public key");
        vm.prank(prov1);
        settlement.rotateProviderKey(newKey);

        assertEq(settlement.providerKey(prov1), newKey);
        assertTrue(settlement.isActiveProvider(prov1), "still active");
        assertEq(settlement.stakeOf(prov1), staked, "same stake");
        assertEq(settlement.totalStaked(), 2 * MIN_STAKE + 500e18);
        (uint192 pendingAfter, uint64 availableAtAfter) = settlement.pendingUnstake(prov1);
        assertEq(pendingAfter, pending, "same pending unstake");
        assertEq(availableAtAfter, availableAt, "same unstake time");
        assertEq(settlement.earnings(prov1), 57e6, "same earnings");
        assertEq(settlement.totalEarnings(), 57e6);
        _assertSolvent();

        // Still paid and still credited under the new key.
        _settle(_simpleBatch(2, alice, prov1, 38e6, 2e6));
        assertEq(settlement.earnings(prov1), 95e6);
        vm.prank(prov1);
        settlement.withdrawEarnings();
        assertEq(usd.balanceOf(prov1), 95e6);
        _assertSolvent();
    }

    function test_rotateProviderKey_twiceMayReturnToAnEarlierKey() public {
        _register(prov1, KEY_1);
        vm.prank(prov1);
        settlement.rotateProviderKey(KEY_2);
        // only the key bound now is refused, so going back to the first one is allowed
        vm.expectEmit(address(settlement));
        emit ISettlement.ProviderKeyRotated(prov1, KEY_2, KEY_1);
        vm.prank(prov1);
        settlement.rotateProviderKey(KEY_1);
        assertEq(settlement.providerKey(prov1), KEY_1);

        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.SameKey.selector, KEY_1));
        settlement.rotateProviderKey(KEY_1);
    }

    function test_rotateProviderKey_leavesOtherProvidersAlone() public {
        _market(0, 0);
        bytes32 newKey = keccak256("provider-1 rotated ed25519 public key");
        vm.prank(prov1);
        settlement.rotateProviderKey(newKey);
        assertEq(settlement.providerKey(prov1), newKey);
        assertEq(settlement.providerKey(prov2), KEY_2, "the other provider's key is untouched");
        assertEq(settlement.stakeOf(prov2), MIN_STAKE);
        assertTrue(settlement.isActiveProvider(prov2));
    }

    function test_stake_movesNetworkTokens() public {
        _register(prov1, KEY_1);
        vm.expectEmit(address(settlement));
        emit ISettlement.Staked(prov1, 600e18, 600e18);
        vm.expectEmit(address(net));
        emit IERC20.Transfer(prov1, address(settlement), 600e18);
        _stake(prov1, 600e18);
        assertFalse(settlement.isActiveProvider(prov1), "below the minimum stake");

        vm.expectEmit(address(settlement));
        emit ISettlement.Staked(prov1, 400e18, MIN_STAKE);
        _stake(prov1, 400e18);

        assertEq(settlement.stakeOf(prov1), MIN_STAKE);
        assertEq(settlement.totalStaked(), MIN_STAKE);
        assertEq(net.balanceOf(address(settlement)), MIN_STAKE);
        assertTrue(settlement.isActiveProvider(prov1));
        _assertSolvent();
    }

    function test_stake_revertsOnZeroAmount() public {
        _register(prov1, KEY_1);
        vm.prank(prov1);
        vm.expectRevert(ISettlement.ZeroAmount.selector);
        settlement.stake(0);
    }

    function test_stake_revertsForUnknownProvider() public {
        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownProvider.selector, prov1));
        settlement.stake(MIN_STAKE);
    }

    function test_stake_revertsWhenPaused() public {
        _register(prov1, KEY_1);
        vm.prank(pauser);
        settlement.pause();
        vm.prank(prov1);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        settlement.stake(MIN_STAKE);
    }

    function test_requestUnstake_recordsPendingExit() public {
        _register(prov1, KEY_1);
        _stake(prov1, 3 * MIN_STAKE);
        uint64 availableAt = uint64(block.timestamp) + UNSTAKE_DELAY;
        vm.expectEmit(address(settlement));
        emit ISettlement.UnstakeRequested(prov1, MIN_STAKE, availableAt);
        vm.prank(prov1);
        settlement.requestUnstake(MIN_STAKE);
        (uint192 amount, uint64 availableAt_) = settlement.pendingUnstake(prov1);
        assertEq(amount, MIN_STAKE);
        assertEq(availableAt_, availableAt);
        assertEq(settlement.stakeOf(prov1), 3 * MIN_STAKE, "still staked (and slashable)");
        assertTrue(settlement.isActiveProvider(prov1), "2x minimum not leaving");

        vm.prank(prov1);
        settlement.requestUnstake(2 * MIN_STAKE + 1);
        assertFalse(settlement.isActiveProvider(prov1), "less than the minimum not leaving");
    }

    function test_requestUnstake_revertsOnZeroAmount() public {
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);
        vm.prank(prov1);
        vm.expectRevert(ISettlement.ZeroAmount.selector);
        settlement.requestUnstake(0);
    }

    function test_requestUnstake_revertsBeyondStake() public {
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);
        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientStake.selector, prov1, MIN_STAKE, MIN_STAKE + 1));
        settlement.requestUnstake(MIN_STAKE + 1);
    }

    function test_requestUnstake_revertsOnAmountTooLarge() public {
        uint256 huge = uint256(type(uint192).max) + 1;
        NetworkToken bigNet = new NetworkToken(prov1, huge, EPOCH_MINT_CAP);
        Settlement s = new Settlement(admin, usd, bigNet, _config());
        vm.startPrank(prov1);
        bigNet.approve(address(s), huge);
        s.registerProvider(KEY_1);
        s.stake(huge);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.AmountTooLarge.selector, huge));
        s.requestUnstake(huge);
        vm.stopPrank();
    }

    function test_completeUnstake_paysAfterDelay() public {
        _register(prov1, KEY_1);
        _stake(prov1, 2 * MIN_STAKE);
        vm.prank(prov1);
        settlement.requestUnstake(MIN_STAKE);
        vm.warp(block.timestamp + UNSTAKE_DELAY);

        vm.expectEmit(address(settlement));
        emit ISettlement.Unstaked(prov1, MIN_STAKE);
        vm.expectEmit(address(net));
        emit IERC20.Transfer(address(settlement), prov1, MIN_STAKE);
        vm.prank(prov1);
        settlement.completeUnstake();

        assertEq(settlement.stakeOf(prov1), MIN_STAKE);
        assertEq(settlement.totalStaked(), MIN_STAKE);
        assertEq(net.balanceOf(prov1), PROVIDER_NET - MIN_STAKE);
        (, uint64 availableAt_) = settlement.pendingUnstake(prov1);
        assertEq(availableAt_, 0);
        _assertSolvent();
    }

    function test_completeUnstake_revertsWithoutPendingExit() public {
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);
        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NoPendingExit.selector, prov1));
        settlement.completeUnstake();
    }

    function test_completeUnstake_revertsBeforeDelay() public {
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);
        vm.prank(prov1);
        settlement.requestUnstake(MIN_STAKE);
        uint64 availableAt = uint64(block.timestamp) + UNSTAKE_DELAY;
        vm.warp(availableAt - 1);
        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ExitNotReady.selector, prov1, availableAt));
        settlement.completeUnstake();
    }

    function test_completeUnstake_revertsWhenStakeWasSlashedAway() public {
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);
        vm.prank(prov1);
        settlement.requestUnstake(MIN_STAKE);
        vm.prank(verifier);
        settlement.slash(prov1, MIN_STAKE, keccak256("double signing"));
        vm.warp(block.timestamp + UNSTAKE_DELAY);
        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NothingToWithdraw.selector, prov1));
        settlement.completeUnstake();
    }

    function test_completeUnstake_paysOnlyWhatIsLeftAfterSlash() public {
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);
        vm.prank(prov1);
        settlement.requestUnstake(MIN_STAKE);
        vm.prank(verifier);
        settlement.slash(prov1, 300e18, keccak256("bad receipt"));
        vm.warp(block.timestamp + UNSTAKE_DELAY);
        vm.expectEmit(address(settlement));
        emit ISettlement.Unstaked(prov1, 700e18);
        vm.prank(prov1);
        settlement.completeUnstake();
        assertEq(settlement.stakeOf(prov1), 0);
        assertEq(net.balanceOf(prov1), PROVIDER_NET - 300e18);
        _assertSolvent();
    }

    function test_completeUnstake_revertsWhenPaused() public {
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);
        vm.prank(prov1);
        settlement.requestUnstake(MIN_STAKE);
        vm.prank(pauser);
        settlement.pause();
        vm.warp(block.timestamp + UNSTAKE_DELAY);
        // the work the pause holds up may still prove a slash, so stake stays
        vm.prank(prov1);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        settlement.completeUnstake();
        vm.prank(pauser);
        settlement.unpause();
        vm.warp(block.timestamp + UNSTAKE_DELAY);
        vm.prank(prov1);
        settlement.completeUnstake();
        assertEq(net.balanceOf(prov1), PROVIDER_NET);
    }

    function test_isActiveProvider_falseForUnknownProvider() public view {
        assertFalse(settlement.isActiveProvider(stranger));
    }

    // =========================================================================================
    // Settlement
    // =========================================================================================

    function test_settleEpoch_paysProvidersTakesFeeMintsRewards() public {
        _market(500e6, 300e6);
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.receiptCount = 42;
        b.fee = 20e6; // 2.5 % of 800
        b.debits = new ISettlement.Debit[](2);
        b.debits[0] = ISettlement.Debit(alice, 500e6);
        b.debits[1] = ISettlement.Debit(bob, 300e6);
        b.credits = new ISettlement.Credit[](2);
        b.credits[0] = ISettlement.Credit(prov1, 480e6);
        b.credits[1] = ISettlement.Credit(prov2, 300e6);
        b.rewards = new ISettlement.Credit[](2);
        b.rewards[0] = ISettlement.Credit(prov1, 6_000e18);
        b.rewards[1] = ISettlement.Credit(prov2, 4_000e18);

        vm.expectEmit(address(settlement));
        emit ISettlement.EpochSettled(1, b.receiptsRoot, 42, 800e6, 20e6, 10_000e18);
        vm.expectEmit(address(net));
        emit INetworkToken.RewardMinted(1, prov1, 6_000e18);
        vm.expectEmit(address(net));
        emit INetworkToken.RewardMinted(1, prov2, 4_000e18);
        _settle(b);

        assertEq(settlement.lastSettledEpoch(), 1);
        assertEq(settlement.epochRoot(1), b.receiptsRoot);
        assertEq(settlement.escrow(alice), 0);
        assertEq(settlement.escrow(bob), 0);
        assertEq(settlement.totalEscrow(), 0);
        assertEq(settlement.earnings(prov1), 480e6);
        assertEq(settlement.earnings(prov2), 300e6);
        assertEq(settlement.totalEarnings(), 780e6);
        assertEq(settlement.accruedFees(), 20e6);
        assertEq(settlement.totalDebited(), 800e6);
        assertEq(settlement.totalCredited(), 780e6);
        assertEq(settlement.totalFees(), 20e6);
        assertEq(net.balanceOf(prov1), PROVIDER_NET - MIN_STAKE + 6_000e18);
        assertEq(net.balanceOf(prov2), PROVIDER_NET - MIN_STAKE + 4_000e18);
        assertEq(net.mintedInEpoch(1), EPOCH_MINT_CAP);
        assertEq(net.totalSupply(), GENESIS_SUPPLY + EPOCH_MINT_CAP);
        _assertSolvent();
    }

    function test_settleEpoch_sequentialEpochsAccumulate() public {
        _market(1_000e6, 1_000e6);
        _settle(_simpleBatch(1, alice, prov1, 95e6, 5e6));
        _settle(_simpleBatch(2, bob, prov2, 190e6, 10e6));
        _settle(_emptyBatch(3)); // an idle epoch still advances
        _settle(_simpleBatch(4, alice, prov2, 100e6, 0));
        assertEq(settlement.lastSettledEpoch(), 4);
        assertEq(settlement.escrow(alice), 800e6);
        assertEq(settlement.escrow(bob), 800e6);
        assertEq(settlement.earnings(prov1), 95e6);
        assertEq(settlement.earnings(prov2), 290e6);
        assertEq(settlement.accruedFees(), 15e6);
        assertEq(settlement.totalDebited(), 400e6);
        _assertSolvent();
    }

    function test_settleEpoch_repeatedEntriesAddUp() public {
        _market(100e6, 0);
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.fee = 1e6;
        b.debits = new ISettlement.Debit[](3);
        b.debits[0] = ISettlement.Debit(alice, 30e6);
        b.debits[1] = ISettlement.Debit(alice, 30e6);
        b.debits[2] = ISettlement.Debit(alice, 40e6); // exactly the rest
        b.credits = new ISettlement.Credit[](2);
        b.credits[0] = ISettlement.Credit(prov1, 50e6);
        b.credits[1] = ISettlement.Credit(prov1, 49e6);
        _settle(b);
        assertEq(settlement.escrow(alice), 0);
        assertEq(settlement.earnings(prov1), 99e6);
        _assertSolvent();
    }

    function test_settleEpoch_feeAtLimitIsAccepted() public {
        _market(1_000e6, 0);
        uint256 fee = _feeLimit(1_000e6); // 50
        _settle(_simpleBatch(1, alice, prov1, 1_000e6 - fee, fee));
        assertEq(settlement.accruedFees(), fee);
    }

    function test_settleEpoch_rewardsAtCapAreAccepted() public {
        _market(0, 0);
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.rewards = new ISettlement.Credit[](1);
        b.rewards[0] = ISettlement.Credit(prov1, EPOCH_MINT_CAP);
        _settle(b);
        assertEq(net.mintedInEpoch(1), EPOCH_MINT_CAP);
    }

    function test_settleEpoch_creditToRegisteredUnstakedProviderIsAccepted() public {
        // Credits (and rewards) check registration only, not stake or activity.
        _register(prov1, KEY_1);
        _deposit(alice, 10e6);
        _settle(_simpleBatch(1, alice, prov1, 10e6, 0));
        assertEq(settlement.earnings(prov1), 10e6);
    }

    function test_settleEpoch_revertsForNonOperator() public {
        _market(100e6, 0);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, 95e6, 5e6);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, OPERATOR_ROLE)
        );
        settlement.settleEpoch(b);

        // Not even the admin settles without the operator role.
        vm.prank(admin);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, admin, OPERATOR_ROLE)
        );
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsWhenPaused() public {
        _market(100e6, 0);
        vm.prank(pauser);
        settlement.pause();
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, 95e6, 5e6);
        vm.prank(operator);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        settlement.settleEpoch(b);

        vm.prank(pauser);
        settlement.unpause();
        _settle(b);
        assertEq(settlement.lastSettledEpoch(), 1);
    }

    function test_settleEpoch_revertsOnReplayedEpoch() public {
        _market(100e6, 0);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, 19e6, 1e6);
        _settle(b);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochAlreadySettled.selector, 1));
        settlement.settleEpoch(b);
        assertEq(settlement.escrow(alice), 80e6, "charged once");
    }

    function test_settleEpoch_revertsOnEpochZero() public {
        ISettlement.EpochBatch memory b = _emptyBatch(0);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochAlreadySettled.selector, 0));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnOlderEpoch() public {
        _settle(_emptyBatch(1));
        _settle(_emptyBatch(2));
        _settle(_emptyBatch(3));
        ISettlement.EpochBatch memory b = _emptyBatch(2);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochAlreadySettled.selector, 2));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnOutOfOrderEpoch() public {
        ISettlement.EpochBatch memory b = _emptyBatch(2);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, 1, 2));
        settlement.settleEpoch(b);

        _settle(_emptyBatch(1));
        b = _emptyBatch(type(uint64).max);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, 2, type(uint64).max));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsWhenDebitsExceedCreditsPlusFee() public {
        _market(100e6, 0);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, 90e6, 5e6);
        b.debits[0].amount = 100e6; // 5 too many
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnbalancedBatch.selector, 100e6, 90e6, 5e6));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsWhenCreditsPlusFeeExceedDebits() public {
        _market(100e6, 0);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, 90e6, 5e6);
        b.credits[0].amount = 95e6 + 1; // providers would be paid out of thin air
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnbalancedBatch.selector, 95e6, 95e6 + 1, 5e6));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnCreditsWithoutDebits() public {
        _market(0, 0);
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.credits = new ISettlement.Credit[](1);
        b.credits[0] = ISettlement.Credit(prov1, 1);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnbalancedBatch.selector, 0, 1, 0));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnDebitBeyondEscrow() public {
        _market(100e6, 0);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, 96e6, 5e6); // debits 101
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, alice, 100e6, 101e6));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnRepeatedDebitsBeyondEscrow() public {
        _market(100e6, 0);
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.debits = new ISettlement.Debit[](2);
        b.debits[0] = ISettlement.Debit(alice, 70e6);
        b.debits[1] = ISettlement.Debit(alice, 31e6); // 30 left after the first
        b.credits = new ISettlement.Credit[](1);
        b.credits[0] = ISettlement.Credit(prov1, 101e6);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, alice, 30e6, 31e6));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnDebitOfUnknownBuyer() public {
        _market(0, 0);
        ISettlement.EpochBatch memory b = _simpleBatch(1, stranger, prov1, 1, 0);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientEscrow.selector, stranger, 0, 1));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnFeeAboveLimit() public {
        _market(1_000e6, 0);
        uint256 limit = _feeLimit(1_000e6);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, 1_000e6 - limit - 1, limit + 1);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.FeeExceedsLimit.selector, limit + 1, limit));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnFeeWithoutDebits() public {
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.fee = 1;
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnbalancedBatch.selector, 0, 0, 1));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnFeeRoundedDownLimit() public {
        // 19 base units at 5 % allow 0.95, rounded down to 0: any fee is too much.
        _market(19, 0);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov1, 18, 1);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.FeeExceedsLimit.selector, 1, 0));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnRewardCapExceeded() public {
        _market(0, 0);
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.rewards = new ISettlement.Credit[](2);
        b.rewards[0] = ISettlement.Credit(prov1, EPOCH_MINT_CAP);
        b.rewards[1] = ISettlement.Credit(prov2, 1);
        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(ISettlement.RewardCapExceeded.selector, EPOCH_MINT_CAP + 1, EPOCH_MINT_CAP)
        );
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_forfeitsTheRewardOfAProviderThatLeftAndSettlesTheRest() public {
        _market(100e6, 0);
        // the operator decides the rewards; then prov2 asks to unstake (front-running, say)
        vm.prank(prov2);
        settlement.requestUnstake(1); // leaving: below the minimum stake that stays
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, prov2, 95e6, 5e6);
        b.rewards = new ISettlement.Credit[](2);
        b.rewards[0] = ISettlement.Credit(prov1, 6_000e18);
        b.rewards[1] = ISettlement.Credit(prov2, 4_000e18);

        vm.expectEmit(address(settlement));
        emit ISettlement.EpochSettled(1, b.receiptsRoot, 1, 100e6, 5e6, 6_000e18);
        vm.expectEmit(address(net));
        emit INetworkToken.RewardMinted(1, prov1, 6_000e18);
        vm.expectEmit(address(settlement));
        emit ISettlement.RewardForfeited(1, prov2, 4_000e18);
        _settle(b);

        assertEq(settlement.lastSettledEpoch(), 1);
        assertEq(settlement.earnings(prov2), 95e6); // paid for its work all the same
        assertEq(net.balanceOf(prov1), PROVIDER_NET - MIN_STAKE + 6_000e18);
        assertEq(net.balanceOf(prov2), PROVIDER_NET - MIN_STAKE);
        assertEq(net.mintedInEpoch(1), 6_000e18);
        assertEq(settlement.lastRewardedAt(), block.timestamp);
        _assertSolvent();
    }

    function test_settleEpoch_withEveryRewardForfeitedMintsNothingAndLeavesTheIntervalAlone() public {
        _market(0, 0);
        vm.prank(prov1);
        settlement.requestUnstake(MIN_STAKE);
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.rewards = new ISettlement.Credit[](1);
        b.rewards[0] = ISettlement.Credit(prov1, 1e18);
        vm.expectEmit(address(settlement));
        emit ISettlement.RewardForfeited(1, prov1, 1e18);
        _settle(b);
        assertEq(settlement.lastSettledEpoch(), 1);
        assertEq(net.mintedInEpoch(1), 0);
        assertEq(settlement.lastRewardedAt(), 0); // nothing minted: the next rewards may come
    }

    function test_settleEpoch_revertsOnCreditToUnknownProvider() public {
        _market(100e6, 0);
        ISettlement.EpochBatch memory b = _simpleBatch(1, alice, stranger, 95e6, 5e6);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownProvider.selector, stranger));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnRewardToUnknownProvider() public {
        _market(0, 0);
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.rewards = new ISettlement.Credit[](2);
        b.rewards[0] = ISettlement.Credit(prov1, 1e18);
        b.rewards[1] = ISettlement.Credit(stranger, 1e18);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownProvider.selector, stranger));
        settlement.settleEpoch(b);
    }

    function test_settleEpoch_revertsOnRewardToZeroAddress() public {
        ISettlement.EpochBatch memory b = _emptyBatch(1);
        b.rewards = new ISettlement.Credit[](1);
        b.rewards[0] = ISettlement.Credit(address(0), 1e18);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownProvider.selector, address(0)));
        settlement.settleEpoch(b);
    }

    /// @dev Everything a failed settlement could have touched.
    struct Books {
        uint64 lastSettledEpoch;
        bytes32 root;
        uint256 escrowAlice;
        uint256 escrowBob;
        uint256 earnings1;
        uint256 earnings2;
        uint256 totalEscrow;
        uint256 totalEarnings;
        uint256 accruedFees;
        uint256 totalDebited;
        uint256 totalCredited;
        uint256 totalFees;
        uint256 netSupply;
        uint256 minted;
        uint256 usdHeld;
    }

    function _books(uint64 epoch) internal view returns (Books memory k) {
        k.lastSettledEpoch = settlement.lastSettledEpoch();
        k.root = settlement.epochRoot(epoch);
        k.escrowAlice = settlement.escrow(alice);
        k.escrowBob = settlement.escrow(bob);
        k.earnings1 = settlement.earnings(prov1);
        k.earnings2 = settlement.earnings(prov2);
        k.totalEscrow = settlement.totalEscrow();
        k.totalEarnings = settlement.totalEarnings();
        k.accruedFees = settlement.accruedFees();
        k.totalDebited = settlement.totalDebited();
        k.totalCredited = settlement.totalCredited();
        k.totalFees = settlement.totalFees();
        k.netSupply = net.totalSupply();
        k.minted = net.mintedInEpoch(epoch);
        k.usdHeld = usd.balanceOf(address(settlement));
    }

    function _assertSameBooks(Books memory a, Books memory b) internal pure {
        assertEq(keccak256(abi.encode(a)), keccak256(abi.encode(b)), "a failed epoch changed state");
    }

    /// A batch that fails late (its debits and credits already applied) changes nothing.
    function test_settleEpoch_failedEpochIsAtomic() public {
        _market(500e6, 300e6);
        _settle(_simpleBatch(1, alice, prov1, 95e6, 5e6));
        Books memory before = _books(2);

        // Fails at its last credit, after every debit was applied.
        ISettlement.EpochBatch memory b = _emptyBatch(2);
        b.fee = 10e6;
        b.debits = new ISettlement.Debit[](2);
        b.debits[0] = ISettlement.Debit(alice, 200e6);
        b.debits[1] = ISettlement.Debit(bob, 200e6);
        b.credits = new ISettlement.Credit[](3);
        b.credits[0] = ISettlement.Credit(prov1, 190e6);
        b.credits[1] = ISettlement.Credit(prov2, 100e6);
        b.credits[2] = ISettlement.Credit(stranger, 100e6);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownProvider.selector, stranger));
        settlement.settleEpoch(b);
        _assertSameBooks(before, _books(2));

        // Fails at the reward cap, after debits, credits, balance and fee checks passed.
        b.credits[2].provider = prov2;
        b.rewards = new ISettlement.Credit[](1);
        b.rewards[0] = ISettlement.Credit(prov1, EPOCH_MINT_CAP + 1);
        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(ISettlement.RewardCapExceeded.selector, EPOCH_MINT_CAP + 1, EPOCH_MINT_CAP)
        );
        settlement.settleEpoch(b);
        _assertSameBooks(before, _books(2));

        // Fails at the fee limit.
        b.rewards[0].amount = EPOCH_MINT_CAP;
        b.fee = 21e6;
        b.credits[0].amount = 179e6;
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.FeeExceedsLimit.selector, 21e6, 20e6));
        settlement.settleEpoch(b);
        _assertSameBooks(before, _books(2));

        // The corrected batch then settles.
        b.fee = 10e6;
        b.credits[0].amount = 190e6;
        _settle(b);
        assertEq(settlement.lastSettledEpoch(), 2);
        assertEq(settlement.escrow(alice), 200e6);
        assertEq(settlement.escrow(bob), 100e6);
        assertEq(settlement.earnings(prov1), 285e6);
        assertEq(settlement.earnings(prov2), 200e6);
        _assertSolvent();
    }

    // =========================================================================================
    // Earnings and fees
    // =========================================================================================

    function test_withdrawEarnings_paysProvider() public {
        _market(100e6, 0);
        _settle(_simpleBatch(1, alice, prov1, 95e6, 5e6));
        vm.expectEmit(address(settlement));
        emit ISettlement.EarningsWithdrawn(prov1, 95e6);
        vm.expectEmit(address(usd));
        emit IERC20.Transfer(address(settlement), prov1, 95e6);
        vm.prank(prov1);
        settlement.withdrawEarnings();
        assertEq(usd.balanceOf(prov1), 95e6);
        assertEq(settlement.earnings(prov1), 0);
        assertEq(settlement.totalEarnings(), 0);
        _assertSolvent();

        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NothingToWithdraw.selector, prov1));
        settlement.withdrawEarnings();
    }

    function test_withdrawEarnings_leavesTheProviderRegisteredForLaterCredits() public {
        _market(100e6, 0);
        _settle(_simpleBatch(1, alice, prov1, 45e6, 1e6));
        vm.prank(prov1);
        settlement.withdrawEarnings();
        assertEq(settlement.earnings(prov1), 0);

        _settle(_simpleBatch(2, alice, prov1, 38e6, 1e6));
        assertEq(settlement.earnings(prov1), 38e6);
        assertEq(settlement.totalEarnings(), 38e6);
        _assertSolvent();
        vm.prank(prov1);
        settlement.withdrawEarnings();
        assertEq(usd.balanceOf(prov1), 83e6);
    }

    function test_withdrawEarnings_revertsWithNothingEarned() public {
        _register(prov1, KEY_1);
        vm.prank(prov1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NothingToWithdraw.selector, prov1));
        settlement.withdrawEarnings();
    }

    function test_withdrawEarnings_allowedWhenPaused() public {
        _market(100e6, 0);
        _settle(_simpleBatch(1, alice, prov1, 95e6, 5e6));
        vm.prank(pauser);
        settlement.pause();
        vm.prank(prov1);
        settlement.withdrawEarnings();
        assertEq(usd.balanceOf(prov1), 95e6);
    }

    function test_withdrawFees_paysTreasury() public {
        _market(100e6, 0);
        _settle(_simpleBatch(1, alice, prov1, 95e6, 5e6));
        vm.expectEmit(address(settlement));
        emit ISettlement.FeesWithdrawn(treasury, 5e6);
        vm.prank(admin);
        settlement.withdrawFees(treasury);
        assertEq(usd.balanceOf(treasury), 5e6);
        assertEq(settlement.accruedFees(), 0);
        assertEq(settlement.totalFees(), 5e6, "the all-time total stays");
        _assertSolvent();
    }

    function test_withdrawFees_revertsForNonAdmin() public {
        _market(100e6, 0);
        _settle(_simpleBatch(1, alice, prov1, 95e6, 5e6));
        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(
                IAccessControl.AccessControlUnauthorizedAccount.selector, operator, DEFAULT_ADMIN_ROLE
            )
        );
        settlement.withdrawFees(operator);
    }

    function test_withdrawFees_revertsOnZeroRecipient() public {
        vm.prank(admin);
        vm.expectRevert(ISettlement.ZeroAddress.selector);
        settlement.withdrawFees(address(0));
    }

    function test_withdrawFees_revertsWithNothingAccrued() public {
        vm.prank(admin);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NothingToWithdraw.selector, treasury));
        settlement.withdrawFees(treasury);
    }

    // =========================================================================================
    // Slashing
    // =========================================================================================

    function test_slash_burnsStake() public {
        _market(0, 0);
        bytes32 evidence = keccak256("receipt signed twice");
        vm.expectEmit(address(settlement));
        emit ISettlement.Slashed(prov1, 250e18, evidence, verifier);
        vm.expectEmit(address(net));
        emit IERC20.Transfer(address(settlement), address(0), 250e18);
        vm.prank(verifier);
        settlement.slash(prov1, 250e18, evidence);

        assertEq(settlement.stakeOf(prov1), MIN_STAKE - 250e18);
        assertEq(settlement.totalStaked(), 2 * MIN_STAKE - 250e18);
        assertTrue(settlement.evidenceUsed(evidence));
        assertEq(net.totalSupply(), GENESIS_SUPPLY - 250e18);
        assertFalse(settlement.isActiveProvider(prov1), "below the minimum after the slash");
        _assertSolvent();
    }

    function test_slash_wholeStake() public {
        _market(0, 0);
        vm.prank(verifier);
        settlement.slash(prov1, MIN_STAKE, keccak256("e"));
        assertEq(settlement.stakeOf(prov1), 0);
        _assertSolvent();
    }

    function test_slash_revertsForNonVerifier() public {
        _market(0, 0);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, VERIFIER_ROLE)
        );
        settlement.slash(prov1, 1e18, keccak256("e"));

        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, operator, VERIFIER_ROLE)
        );
        settlement.slash(prov1, 1e18, keccak256("e"));
    }

    function test_slash_revertsOnZeroAmount() public {
        _market(0, 0);
        vm.prank(verifier);
        vm.expectRevert(ISettlement.ZeroAmount.selector);
        settlement.slash(prov1, 0, keccak256("e"));
    }

    function test_slash_revertsOnEvidenceReuse() public {
        _market(0, 0);
        bytes32 evidence = keccak256("e");
        vm.prank(verifier);
        settlement.slash(prov1, 1e18, evidence);
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EvidenceAlreadyUsed.selector, evidence));
        settlement.slash(prov1, 1e18, evidence);
        // Evidence is single-use across providers too.
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EvidenceAlreadyUsed.selector, evidence));
        settlement.slash(prov2, 1e18, evidence);
    }

    function test_slash_revertsBeyondStake() public {
        _market(0, 0);
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientStake.selector, prov1, MIN_STAKE, MIN_STAKE + 1));
        settlement.slash(prov1, MIN_STAKE + 1, keccak256("e"));
        assertFalse(settlement.evidenceUsed(keccak256("e")), "a failed slash keeps the evidence");
    }

    function test_slash_revertsForUnstakedAccount() public {
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.InsufficientStake.selector, stranger, 0, 1));
        settlement.slash(stranger, 1, keccak256("e"));
    }

    function test_slash_allowedWhenPaused() public {
        _market(0, 0);
        vm.prank(pauser);
        settlement.pause();
        vm.prank(verifier);
        settlement.slash(prov1, 1e18, keccak256("e"));
        assertEq(settlement.stakeOf(prov1), MIN_STAKE - 1e18);
    }

    // =========================================================================================
    // Pausing
    // =========================================================================================

    function test_pause_byPauserOnly() public {
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, PAUSER_ROLE)
        );
        settlement.pause();

        vm.expectEmit(address(settlement));
        emit Pausable.Paused(pauser);
        vm.prank(pauser);
        settlement.pause();
        assertTrue(settlement.paused());

        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, stranger, PAUSER_ROLE)
        );
        settlement.unpause();

        vm.expectEmit(address(settlement));
        emit Pausable.Unpaused(pauser);
        vm.prank(pauser);
        settlement.unpause();
        assertFalse(settlement.paused());
    }

    function test_pause_revertsWhenAlreadyPaused() public {
        vm.startPrank(pauser);
        settlement.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        settlement.pause();
        vm.stopPrank();
    }

    function test_unpause_revertsWhenNotPaused() public {
        vm.prank(pauser);
        vm.expectRevert(Pausable.ExpectedPause.selector);
        settlement.unpause();
    }

    // =========================================================================================
    // Receipts: Merkle proofs
    // =========================================================================================

    function _receipts(uint256 n) internal pure returns (bytes32[] memory r) {
        r = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            r[i] = keccak256(abi.encode("receipt", i));
        }
    }

    function _settleRoot(uint64 epoch, bytes32 root, uint64 count) internal {
        ISettlement.EpochBatch memory b = _emptyBatch(epoch);
        b.receiptsRoot = root;
        b.receiptCount = count;
        _settle(b);
    }

    function test_verifyReceipt_threeLeafTreeByHand() public {
        bytes32[] memory r = _receipts(3);
        bytes32 l0 = keccak256(abi.encode(r[0]));
        bytes32 l1 = keccak256(abi.encode(r[1]));
        bytes32 l2 = keccak256(abi.encode(r[2]));
        bytes32 n01 = MerkleBuilder.hashPair(l0, l1);
        bytes32 root = MerkleBuilder.hashPair(n01, l2); // l2 moved up unchanged
        assertEq(MerkleBuilder.root(r), root);
        _settleRoot(1, root, 3);

        bytes32[] memory p = new bytes32[](2);
        p[0] = l1;
        p[1] = l2;
        assertTrue(settlement.verifyReceipt(1, r[0], p));
        p[0] = l0;
        assertTrue(settlement.verifyReceipt(1, r[1], p));
        bytes32[] memory p2 = new bytes32[](1);
        p2[0] = n01;
        assertTrue(settlement.verifyReceipt(1, r[2], p2));
    }

    function test_verifyReceipt_everyLeafOfThreeToFiveLeafTrees() public {
        for (uint64 n = 3; n <= 5; ++n) {
            bytes32[] memory r = _receipts(n);
            bytes32 root = MerkleBuilder.root(r);
            uint64 epoch = n - 2;
            _settleRoot(epoch, root, n);
            for (uint256 i; i < n; ++i) {
                bytes32[] memory proof = MerkleBuilder.proof(r, i);
                assertTrue(settlement.verifyReceipt(epoch, r[i], proof), "a counted receipt");
            }
        }
    }

    function test_verifyReceipt_rejectsWhatWasNotCounted() public {
        bytes32[] memory r = _receipts(5);
        _settleRoot(1, MerkleBuilder.root(r), 5);
        _settleRoot(2, MerkleBuilder.root(_receipts(4)), 4);
        bytes32[] memory proof = MerkleBuilder.proof(r, 3);

        assertTrue(settlement.verifyReceipt(1, r[3], proof));
        // Another receipt with this proof.
        assertFalse(settlement.verifyReceipt(1, r[2], proof));
        assertFalse(settlement.verifyReceipt(1, keccak256("forged receipt"), proof));
        // The same receipt against another epoch's root.
        assertFalse(settlement.verifyReceipt(2, r[3], proof));
        // An epoch never settled.
        assertFalse(settlement.verifyReceipt(3, r[3], proof));
        // A tampered or truncated proof.
        bytes32[] memory tampered = MerkleBuilder.proof(r, 3);
        tampered[0] = bytes32(uint256(tampered[0]) ^ 1);
        assertFalse(settlement.verifyReceipt(1, r[3], tampered));
        bytes32[] memory truncated = new bytes32[](proof.length - 1);
        for (uint256 i; i < truncated.length; ++i) {
            truncated[i] = proof[i];
        }
        assertFalse(settlement.verifyReceipt(1, r[3], truncated));
        // An inner node is not a receipt: its hash is not a leaf.
        assertFalse(settlement.verifyReceipt(1, proof[0], new bytes32[](0)));
        bytes32 leaf = MerkleBuilder.leafOf(r[3]);
        bytes32[] memory rest = new bytes32[](proof.length - 1);
        for (uint256 i; i < rest.length; ++i) {
            rest[i] = proof[i + 1];
        }
        assertFalse(settlement.verifyReceipt(1, MerkleBuilder.hashPair(leaf, proof[0]), rest));
    }

    /// Roots and proofs computed off-chain by protocol/merkle.py for the receipt hashes
    /// bytes32(1), ..., bytes32(n): the contract accepts the operator's trees as built.
    function test_verifyReceipt_acceptsTreesBuiltOffChain() public {
        bytes32[3] memory roots = [
            bytes32(0x4cdbcd942bd29b80bbd5eb9929ec8d0ea9c97d2690f9d2f8318390505ec1a769),
            bytes32(0x9cb86f87624f55e4956a62a87acdd72769cdb21f746c27d345ef90343a9b2316),
            bytes32(0x9be4d908ee1467e12177bdda3d2712a12e7a2445350dccd4be9c218066530b19)
        ];
        for (uint64 n = 3; n <= 5; ++n) {
            bytes32[] memory r = new bytes32[](n);
            for (uint256 i; i < n; ++i) {
                r[i] = bytes32(i + 1);
            }
            assertEq(MerkleBuilder.root(r), roots[n - 3], "same root as protocol/merkle.py");
            _settleRoot(n - 2, roots[n - 3], n);
        }
        // The last leaf's proofs, as protocol/merkle.py gives them.
        bytes32[] memory p3 = new bytes32[](1);
        p3[0] = 0x2a171b5bcd1449348c3e09a5424946b5e6d6f5471221941d585131d673952ee4;
        assertTrue(settlement.verifyReceipt(1, bytes32(uint256(3)), p3));
        bytes32[] memory p4 = new bytes32[](2);
        p4[0] = 0xc2575a0e9e593c00f959f8c92f12db2869c3395a3b0502d05e2516446f71f85b;
        p4[1] = 0x2a171b5bcd1449348c3e09a5424946b5e6d6f5471221941d585131d673952ee4;
        assertTrue(settlement.verifyReceipt(2, bytes32(uint256(4)), p4));
        bytes32[] memory p5 = new bytes32[](1);
        p5[0] = 0x9cb86f87624f55e4956a62a87acdd72769cdb21f746c27d345ef90343a9b2316;
        assertTrue(settlement.verifyReceipt(3, bytes32(uint256(5)), p5));
    }

    function test_verifyReceipt_singleLeafTree() public {
        bytes32[] memory r = _receipts(1);
        _settleRoot(1, MerkleBuilder.root(r), 1);
        assertTrue(settlement.verifyReceipt(1, r[0], new bytes32[](0)));
        assertFalse(settlement.verifyReceipt(1, keccak256("other"), new bytes32[](0)));
    }

    function test_verifyReceipt_falseForZeroRoot() public {
        _settleRoot(1, bytes32(0), 0);
        assertFalse(settlement.verifyReceipt(1, bytes32(0), new bytes32[](0)));
    }
}
