// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {Base} from "./Base.t.sol";
import {console} from "./utils/Test.sol";

/// @dev Gas of `settleEpoch` alone for N buyers paying N providers (N = 1, 10, 100), each debit
///      and each credit a distinct account. The market is built in `setUp`, which forge runs as
///      its own transaction, so that the measured call finds storage as a real settlement does:
///      cold (first touched in this transaction) but already written (non-zero escrow, a
///      registered key, an earlier epoch's counters).
///
///      Each test logs one line that script/gas-report.sh turns into a table:
///        gas-bench|<scenario>|<N>|<settleEpoch gas>|<per debit+credit pair>|<tx estimate>|<calldata bytes>
///      where <settleEpoch gas> is measured with gasleft() around the call (it includes the
///      2,600 of the cold CALL into the contract) and <tx estimate> adds what a real transaction
///      pays on top: 21,000 base and the calldata (EIP-7623 rules, as in Prague), less that CALL.
abstract contract SettlementGasBench is Base {
    uint256 internal constant MAX_N = 100;
    uint256 internal constant ESCROW_EACH = 5_000e6; // every buyer holds 5,000 tUSD
    uint256 internal constant FEE_BPS = 200; // the operator takes 2 % (the limit is 5 %)

    address[] internal buyers;
    address[] internal providers;

    function setUp() public virtual override {
        super.setUp();
        for (uint256 i; i < MAX_N; ++i) {
            address buyer = vm.addr(uint256(keccak256(abi.encode("gas buyer", i))));
            _fundBuyer(buyer, ESCROW_EACH);
            _deposit(buyer, ESCROW_EACH);
            buyers.push(buyer);

            address provider = vm.addr(uint256(keccak256(abi.encode("gas provider", i))));
            _fundProvider(provider, 2 * MIN_STAKE); // stakes half, holds half
            _register(provider, keccak256(abi.encode("ed25519", i)));
            _stake(provider, MIN_STAKE);
            providers.push(provider);
        }
        // An earlier epoch charged every buyer and paid every provider: the running totals,
        // every escrow and every provider's earnings are non-zero, as after weeks of operation.
        _settle(_batch(1, MAX_N, false));
    }

    /// Epoch `epoch`: buyer i pays about 1.2 tUSD, a little different for each; the fee is 2 %;
    /// the rest is split evenly among the providers, the last one taking the rounding rest.
    function _batch(uint64 epoch, uint256 n, bool withRewards) internal view returns (ISettlement.EpochBatch memory b) {
        b = _emptyBatch(epoch);
        // forge-lint: disable-next-line(unsafe-typecast)
        b.receiptCount = uint64(n * 37);
        b.debits = new ISettlement.Debit[](n);
        uint256 debited;
        for (uint256 i; i < n; ++i) {
            uint256 amount = 1_234_567 + i * 10_007 + uint256(epoch) * 101;
            b.debits[i] = ISettlement.Debit(buyers[i], amount);
            debited += amount;
        }
        b.fee = debited * FEE_BPS / 10_000;
        uint256 toCredit = debited - b.fee;
        b.credits = new ISettlement.Credit[](n);
        uint256 share = toCredit / n;
        for (uint256 j; j < n; ++j) {
            uint256 amount = j + 1 == n ? toCredit - share * (n - 1) : share;
            b.credits[j] = ISettlement.Credit(providers[j], amount);
        }
        b.rewards = new ISettlement.Credit[](withRewards ? n : 0);
        for (uint256 j; j < b.rewards.length; ++j) {
            b.rewards[j] = ISettlement.Credit(providers[j], EPOCH_MINT_CAP / n);
        }
    }

    /// Settles epoch 2 with N buyers and N providers and logs its gas.
    function _measure(string memory scenario, uint256 n, bool withRewards) internal {
        ISettlement.EpochBatch memory b = _batch(2, n, withRewards);
        bytes memory data = abi.encodeCall(ISettlement.settleEpoch, (b));

        vm.prank(operator);
        uint256 before = gasleft();
        (bool ok,) = address(settlement).call(data);
        uint256 used = before - gasleft();
        assertTrue(ok, "settleEpoch reverted");
        assertEq(settlement.lastSettledEpoch(), 2);
        _assertSolvent();

        _log(scenario, n, used, data);
    }

    function _log(string memory scenario, uint256 n, uint256 used, bytes memory data) internal view {
        uint256 tokens = _calldataTokens(data);
        uint256 execution = used - 2_600; // a transaction's target is warm and needs no CALL
        uint256 standard = 21_000 + 4 * tokens + execution;
        uint256 floor = 21_000 + 10 * tokens;
        string memory line = string.concat("gas-bench|", scenario, "|", vm.toString(n), "|", vm.toString(used), "|");
        line = string.concat(
            line,
            vm.toString(used / n),
            "|",
            vm.toString(standard > floor ? standard : floor),
            "|",
            vm.toString(data.length)
        );
        console.log(line);
    }

    /// EIP-7623 calldata tokens: one per zero byte, four per non-zero byte.
    function _calldataTokens(bytes memory data) internal pure returns (uint256 tokens) {
        for (uint256 i; i < data.length; ++i) {
            tokens += data[i] == 0 ? 1 : 4;
        }
    }
}

/// Steady state: every buyer and provider took part in the previous epoch and providers have
/// not yet withdrawn, so each debit and credit rewrites a non-zero slot.
contract SettlementGasTest is SettlementGasBench {
    function test_gas_settle_1x1() public {
        _measure("steady", 1, false);
    }

    function test_gas_settle_10x10() public {
        _measure("steady", 10, false);
    }

    function test_gas_settle_100x100() public {
        _measure("steady", 100, false);
    }

    /// The same epochs also minting a network-token reward to each provider (cap / N each).
    function test_gas_settleWithRewards_1x1() public {
        _measure("steady+rewards", 1, true);
    }

    function test_gas_settleWithRewards_10x10() public {
        _measure("steady+rewards", 10, true);
    }

    function test_gas_settleWithRewards_100x100() public {
        _measure("steady+rewards", 100, true);
    }
}

/// Providers withdrew their earnings after the previous epoch, so each credit writes a zeroed
/// slot again (the costliest case for credits: 20,000 instead of 2,900 a write).
contract SettlementGasEarningsWithdrawnTest is SettlementGasBench {
    function setUp() public override {
        super.setUp();
        for (uint256 j; j < MAX_N; ++j) {
            vm.prank(providers[j]);
            settlement.withdrawEarnings();
        }
    }

    function test_gas_settle_1x1() public {
        _measure("earnings-withdrawn", 1, false);
    }

    function test_gas_settle_10x10() public {
        _measure("earnings-withdrawn", 10, false);
    }

    function test_gas_settle_100x100() public {
        _measure("earnings-withdrawn", 100, false);
    }
}
