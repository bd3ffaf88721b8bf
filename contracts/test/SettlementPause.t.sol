// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {Base} from "./Base.t.sol";

/// A pause must not use up an exit's delay: after `unpause` a pending withdrawal or unstake waits
/// until its own `availableAt` and a full delay after the unpause have both passed, so the epochs
/// the pause held up can settle, and stake be slashed, before anything leaves.
contract SettlementPauseTest is Base {
    function _pause() internal {
        vm.prank(pauser);
        settlement.pause();
    }

    function _unpause() internal returns (uint64 unpausedAt) {
        vm.prank(pauser);
        settlement.unpause();
        return uint64(block.timestamp);
    }

    function _requestWithdrawal(address buyer, uint256 amount) internal returns (uint64 availableAt) {
        vm.prank(buyer);
        settlement.requestWithdrawal(amount);
        (, availableAt) = settlement.pendingWithdrawal(buyer);
    }

    function _requestUnstake(address provider, uint256 amount) internal returns (uint64 availableAt) {
        vm.prank(provider);
        settlement.requestUnstake(amount);
        (, availableAt) = settlement.pendingUnstake(provider);
    }

    function _expectWithdrawNotReady(address buyer, uint64 readyAt) internal {
        vm.prank(buyer);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ExitNotReady.selector, buyer, readyAt));
        settlement.withdraw();
    }

    function _expectUnstakeNotReady(address provider, uint64 readyAt) internal {
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ExitNotReady.selector, provider, readyAt));
        settlement.completeUnstake();
    }

    function _withdrawalReadyAt(address buyer) internal view returns (uint64) {
        address[] memory one = new address[](1);
        one[0] = buyer;
        (, ISettlement.PendingExit[] memory withdrawals) = settlement.escrowsOf(one);
        return withdrawals[0].availableAt;
    }

    // --- unpause ----------------------------------------------------------------------------------

    function test_unpause_recordsTheTime() public {
        assertEq(settlement.lastUnpausedAt(), 0);
        _pause();
        vm.warp(block.timestamp + 1 hours);
        uint64 unpausedAt = _unpause();
        assertEq(settlement.lastUnpausedAt(), unpausedAt);
        assertFalse(settlement.paused());
    }

    function test_unpause_revertsWhenNotPaused() public {
        vm.prank(pauser);
        vm.expectRevert(Pausable.ExpectedPause.selector);
        settlement.unpause();
        assertEq(settlement.lastUnpausedAt(), 0);
    }

    // --- withdrawals ------------------------------------------------------------------------------

    function test_withdraw_waitsAFullDelayAfterUnpause() public {
        _deposit(alice, 100e6);
        _requestWithdrawal(alice, 100e6);
        _pause();
        vm.warp(block.timestamp + WITHDRAWAL_DELAY + 1 hours); // matured during the pause
        uint64 unpausedAt = _unpause();
        uint64 readyAt = unpausedAt + WITHDRAWAL_DELAY;
        _expectWithdrawNotReady(alice, readyAt);
        vm.warp(readyAt - 1);
        _expectWithdrawNotReady(alice, readyAt);
        vm.warp(readyAt);
        vm.expectEmit(address(settlement));
        emit ISettlement.Withdrawn(alice, 100e6);
        vm.prank(alice);
        settlement.withdraw();
        assertEq(usd.balanceOf(alice), BUYER_FUNDS);
        _assertSolvent();
    }

    function test_withdraw_readyBeforeThePauseWaitsToo() public {
        _deposit(alice, 100e6);
        _requestWithdrawal(alice, 100e6);
        vm.warp(block.timestamp + WITHDRAWAL_DELAY); // ready, not taken
        _pause();
        vm.warp(block.timestamp + 1 hours);
        uint64 unpausedAt = _unpause();
        _expectWithdrawNotReady(alice, unpausedAt + WITHDRAWAL_DELAY);
    }

    function test_withdraw_requestedAfterUnpauseKeepsItsOwnTime() public {
        _deposit(alice, 100e6);
        _pause();
        vm.warp(block.timestamp + 3 days);
        uint64 unpausedAt = _unpause();
        vm.warp(block.timestamp + 1 hours);
        uint64 availableAt = _requestWithdrawal(alice, 100e6);
        assertGt(availableAt, unpausedAt + WITHDRAWAL_DELAY);
        vm.warp(unpausedAt + WITHDRAWAL_DELAY); // the unpause's delay is over, its own is not
        _expectWithdrawNotReady(alice, availableAt);
        vm.warp(availableAt);
        vm.prank(alice);
        settlement.withdraw();
        assertEq(settlement.escrow(alice), 0);
    }

    function test_withdraw_requestedWhilePausedWaitsAFullDelayAfterUnpause() public {
        _deposit(alice, 100e6);
        _pause();
        _requestWithdrawal(alice, 100e6);
        vm.warp(block.timestamp + 2 hours);
        uint64 unpausedAt = _unpause();
        _expectWithdrawNotReady(alice, unpausedAt + WITHDRAWAL_DELAY);
    }

    /// The point of the rule: the epoch the pause held up debits the leaving buyer first.
    function test_withdraw_afterUnpausePaysWhatTheHeldUpEpochLeft() public {
        _market(500e6, 0);
        _requestWithdrawal(alice, 500e6);
        _pause();
        vm.warp(block.timestamp + WITHDRAWAL_DELAY + 1);
        uint64 unpausedAt = _unpause();
        _settle(_simpleBatch(1, alice, prov1, 190e6, 10e6));
        vm.warp(unpausedAt + WITHDRAWAL_DELAY);
        vm.expectEmit(address(settlement));
        emit ISettlement.Withdrawn(alice, 300e6);
        vm.prank(alice);
        settlement.withdraw();
        assertEq(usd.balanceOf(alice), BUYER_FUNDS - 200e6);
        assertEq(settlement.earnings(prov1), 190e6);
        _assertSolvent();
    }

    function test_escrowsOf_reportsWhenAWithdrawalCanBeTaken() public {
        _deposit(alice, 100e6);
        uint64 availableAt = _requestWithdrawal(alice, 100e6);
        assertEq(_withdrawalReadyAt(alice), availableAt);
        assertEq(_withdrawalReadyAt(bob), 0); // nothing pending stays zero
        _pause();
        vm.warp(block.timestamp + 5 hours);
        // while paused: not before a full delay from now
        assertEq(_withdrawalReadyAt(alice), uint64(block.timestamp) + WITHDRAWAL_DELAY);
        assertEq(_withdrawalReadyAt(bob), 0);
        uint64 unpausedAt = _unpause();
        assertEq(_withdrawalReadyAt(alice), unpausedAt + WITHDRAWAL_DELAY);
        (, uint64 stored) = settlement.pendingWithdrawal(alice);
        assertEq(stored, availableAt, "the request's own time is kept");
    }

    // --- unstakes ---------------------------------------------------------------------------------

    function test_completeUnstake_waitsAFullDelayAfterUnpause() public {
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);
        _requestUnstake(prov1, MIN_STAKE);
        _pause();
        vm.warp(block.timestamp + UNSTAKE_DELAY + 1 days);
        uint64 unpausedAt = _unpause();
        uint64 readyAt = unpausedAt + UNSTAKE_DELAY;
        _expectUnstakeNotReady(prov1, readyAt);
        vm.warp(readyAt - 1);
        _expectUnstakeNotReady(prov1, readyAt);
        // the verifier can still judge the held-up work
        vm.prank(verifier);
        settlement.slash(prov1, 100e18, keccak256("found after the pause"));
        vm.warp(readyAt);
        vm.expectEmit(address(settlement));
        emit ISettlement.Unstaked(prov1, MIN_STAKE - 100e18);
        vm.prank(prov1);
        settlement.completeUnstake();
        assertEq(net.balanceOf(prov1), PROVIDER_NET - 100e18);
        _assertSolvent();
    }

    function test_completeUnstake_requestedAfterUnpauseKeepsItsOwnTime() public {
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);
        _pause();
        vm.warp(block.timestamp + 1 days);
        uint64 unpausedAt = _unpause();
        vm.warp(block.timestamp + 1 days);
        uint64 availableAt = _requestUnstake(prov1, MIN_STAKE);
        assertGt(availableAt, unpausedAt + UNSTAKE_DELAY);
        vm.warp(unpausedAt + UNSTAKE_DELAY);
        _expectUnstakeNotReady(prov1, availableAt);
        vm.warp(availableAt);
        vm.prank(prov1);
        settlement.completeUnstake();
        assertEq(settlement.stakeOf(prov1), 0);
    }

    function test_exits_delaysAreIndependent() public {
        // Withdrawals wait a withdrawal delay after the unpause, unstakes an unstake delay.
        _market(100e6, 0);
        _requestWithdrawal(alice, 100e6);
        _requestUnstake(prov1, MIN_STAKE);
        _pause();
        vm.warp(block.timestamp + UNSTAKE_DELAY);
        uint64 unpausedAt = _unpause();
        vm.warp(unpausedAt + WITHDRAWAL_DELAY);
        vm.prank(alice);
        settlement.withdraw();
        _expectUnstakeNotReady(prov1, unpausedAt + UNSTAKE_DELAY);
    }

    function test_exits_laterPauseMovesTheClockAgain() public {
        _deposit(alice, 100e6);
        _requestWithdrawal(alice, 100e6);
        _pause();
        vm.warp(block.timestamp + WITHDRAWAL_DELAY);
        _unpause();
        vm.warp(block.timestamp + WITHDRAWAL_DELAY / 2);
        _pause();
        vm.warp(block.timestamp + 1 hours);
        uint64 unpausedAt = _unpause();
        _expectWithdrawNotReady(alice, unpausedAt + WITHDRAWAL_DELAY);
    }

    // --- fuzz -------------------------------------------------------------------------------------

    /// Any request time relative to the pause, any pause length, any wait after it: an exit pays
    /// exactly when both its own time and a full delay after the unpause have passed.
    function testFuzz_exits_waitBothTheirOwnTimeAndAFullDelayAfterUnpause(
        uint256 requestBefore,
        uint256 pauseLength,
        uint256 requestAfter,
        uint256 wait,
        bool requestLate
    ) public {
        _market(100e6, 0);
        pauseLength = bound(pauseLength, 0, 4 * uint256(UNSTAKE_DELAY));
        wait = bound(wait, 0, 3 * uint256(UNSTAKE_DELAY));
        if (!requestLate) {
            // requested up to two unstake delays before the pause
            _requestWithdrawal(alice, 100e6);
            _requestUnstake(prov1, MIN_STAKE);
            vm.warp(block.timestamp + bound(requestBefore, 0, 2 * uint256(UNSTAKE_DELAY)));
        }
        _pause();
        vm.warp(block.timestamp + pauseLength);
        uint64 unpausedAt = _unpause();
        if (requestLate) {
            vm.warp(block.timestamp + bound(requestAfter, 0, 2 * uint256(UNSTAKE_DELAY)));
            _requestWithdrawal(alice, 100e6);
            _requestUnstake(prov1, MIN_STAKE);
        }
        (, uint64 withdrawalAt) = settlement.pendingWithdrawal(alice);
        (, uint64 unstakeAt) = settlement.pendingUnstake(prov1);
        uint64 withdrawalReady = _later(withdrawalAt, unpausedAt + WITHDRAWAL_DELAY);
        uint64 unstakeReady = _later(unstakeAt, unpausedAt + UNSTAKE_DELAY);
        assertEq(_withdrawalReadyAt(alice), withdrawalReady);
        vm.warp(block.timestamp + wait);

        if (block.timestamp < withdrawalReady) {
            _expectWithdrawNotReady(alice, withdrawalReady);
        } else {
            vm.prank(alice);
            settlement.withdraw();
            assertEq(settlement.escrow(alice), 0);
        }
        if (block.timestamp < unstakeReady) {
            _expectUnstakeNotReady(prov1, unstakeReady);
        } else {
            vm.prank(prov1);
            settlement.completeUnstake();
            assertEq(settlement.stakeOf(prov1), 0);
        }
        _assertSolvent();
    }

    function _later(uint64 a, uint64 b) internal pure returns (uint64) {
        return a > b ? a : b;
    }
}
