// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {Base} from "./Base.t.sol";

/// @dev A deployment that mints rewards at most once an hour, however often epochs settle, so
///      the per-epoch cap is also a cap per hour.
contract SettlementRewardIntervalTest is Base {
    uint64 internal constant INTERVAL = 1 hours;

    function _minRewardInterval() internal pure override returns (uint64) {
        return INTERVAL;
    }

    function _rewardBatch(uint64 epoch) internal view returns (ISettlement.EpochBatch memory b) {
        b = _emptyBatch(epoch);
        b.rewards = new ISettlement.Credit[](1);
        b.rewards[0] = ISettlement.Credit(prov1, EPOCH_MINT_CAP);
    }

    function test_settleEpoch_revertsIfRewardsTooSoon() public {
        _market(0, 0);
        _settle(_rewardBatch(1));
        assertEq(settlement.lastRewardedAt(), block.timestamp);
        uint64 availableAt = uint64(block.timestamp) + INTERVAL;

        vm.warp(block.timestamp + INTERVAL - 1);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.RewardsTooSoon.selector, availableAt));
        settlement.settleEpoch(_rewardBatch(2));

        _settle(_emptyBatch(2)); // epochs without rewards settle at any pace
        vm.warp(availableAt);
        _settle(_rewardBatch(3));
        assertEq(net.balanceOf(prov1), PROVIDER_NET - MIN_STAKE + 2 * EPOCH_MINT_CAP);
    }

    function testFuzz_rewardsNeverExceedCapPerInterval(uint8 epochs, uint32 gap) public {
        _market(0, 0);
        uint256 n = bound(epochs, 1, 40);
        uint256 step = bound(gap, 0, 2 * INTERVAL);
        uint256 start = block.timestamp;
        for (uint64 e = 1; e <= n; ++e) {
            vm.prank(operator);
            try settlement.settleEpoch(_rewardBatch(e)) {}
            catch {
                _settle(_emptyBatch(e));
            }
            vm.warp(block.timestamp + step);
        }
        uint256 minted = net.balanceOf(prov1) - (PROVIDER_NET - MIN_STAKE);
        uint256 intervals = (block.timestamp - start) / INTERVAL + 1;
        assertLe(minted, intervals * EPOCH_MINT_CAP);
    }
}
