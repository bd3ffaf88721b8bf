// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {NetworkToken} from "../src/NetworkToken.sol";
import {PaymentToken} from "../src/PaymentToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {Base} from "./Base.t.sol";
import {TestBase, console} from "./utils/Test.sol";

/// @dev Drives the settlement contract through bounded, mostly valid actions by a fixed cast of
///      buyers and providers, and keeps ghost tallies of every token that moved. An action that
///      ends otherwise than the model predicts (a success that should fail or the reverse, or a
///      payout of the wrong size) is counted in `unexpected`, which an invariant keeps at zero:
///      assertions inside a handler would only be swallowed as reverts.
contract SettlementHandler is TestBase {
    Settlement internal immutable s;
    PaymentToken internal immutable usd;
    NetworkToken internal immutable net;
    address internal immutable operator;
    address internal immutable verifier;
    address internal immutable admin;
    address internal immutable treasury;
    uint256 internal immutable cap;
    uint256 internal immutable maxFeeBps;
    uint64 internal immutable withdrawalDelay;
    uint64 internal immutable unstakeDelay;

    address[] internal _buyers;
    address[] internal _providers;

    /// The clock the handler keeps (forge does not carry vm.warp between calls everywhere).
    uint256 public currentTime;

    // Ghost tallies: what went in and out, by kind.
    uint256 public ghostDeposited;
    uint256 public ghostWithdrawn;
    uint256 public ghostDebited;
    uint256 public ghostCredited;
    uint256 public ghostFees;
    uint256 public ghostFeesWithdrawn;
    uint256 public ghostEarningsWithdrawn;
    uint256 public ghostStaked;
    uint256 public ghostUnstaked;
    uint256 public ghostSlashed;
    uint256 public ghostRewards;
    /// Rewards named in a batch to a provider that was not active, so not minted.
    uint256 public forfeitedRewards;
    uint64 public ghostSettles;
    /// When the handler last unpaused (0: never); exits wait a full delay after it.
    uint64 public ghostUnpausedAt;
    uint256 public ghostRejectedBatches;
    /// The key each provider last bound, by registration or rotation (zero: never registered).
    mapping(address provider => bytes32 key) public ghostKey;
    // How often the actions that can do nothing did something (coverage, logged at the end).
    uint256 public paidWithdrawals;
    uint256 public paidUnstakes;
    uint256 public paidEarnings;
    uint256 public debitingSettles;
    uint256 public rotations;
    uint256 public pauses;

    /// Outcomes that differed from the model; must stay zero.
    uint256 public unexpected;
    string public firstUnexpected;

    uint256 internal _evidenceNonce;
    mapping(string action => uint256 count) public calls;

    constructor(
        Settlement settlement,
        address operator_,
        address verifier_,
        address admin_,
        address treasury_,
        address[] memory buyers_,
        address[] memory providers_
    ) {
        s = settlement;
        usd = PaymentToken(address(settlement.paymentToken()));
        net = NetworkToken(address(settlement.networkToken()));
        operator = operator_;
        verifier = verifier_;
        admin = admin_;
        treasury = treasury_;
        cap = net.epochMintCap();
        maxFeeBps = settlement.maxFeeBps();
        withdrawalDelay = settlement.withdrawalDelay();
        unstakeDelay = settlement.unstakeDelay();
        _buyers = buyers_;
        _providers = providers_;
        for (uint256 j; j < providers_.length; ++j) {
            ghostKey[providers_[j]] = settlement.providerKey(providers_[j]); // registered before
        }
        currentTime = block.timestamp;
    }

    modifier clocked(string memory action) {
        vm.warp(currentTime);
        calls[action] += 1;
        _;
    }

    function buyers() external view returns (address[] memory) {
        return _buyers;
    }

    function providers() external view returns (address[] memory) {
        return _providers;
    }

    function _flag(string memory what) internal {
        if (unexpected == 0) firstUnexpected = what;
        unexpected += 1;
    }

    function _buyer(uint256 seed) internal view returns (address) {
        return _buyers[seed % _buyers.length];
    }

    function _provider(uint256 seed) internal view returns (address) {
        return _providers[seed % _providers.length];
    }

    /// The `k`-th actor after the one `seed` picks (no overflow for any seed).
    function _next(uint256 seed, uint256 k, uint256 n) internal pure returns (uint256) {
        return seed % n + k;
    }

    /// Mostly an actor for whom the action can do something, sometimes any actor.
    function _buyerWithExit(uint256 seed) internal view returns (address) {
        if (seed % 4 != 0) {
            for (uint256 k; k < _buyers.length; ++k) {
                address b = _buyer(_next(seed, k, _buyers.length));
                (, uint64 availableAt) = s.pendingWithdrawal(b);
                if (availableAt != 0) return b;
            }
        }
        return _buyer(seed);
    }

    function _providerWith(uint256 seed, uint8 what) internal view returns (address) {
        if (seed % 4 != 0) {
            for (uint256 k; k < _providers.length; ++k) {
                address p = _provider(_next(seed, k, _providers.length));
                if (what == 0 && s.earnings(p) != 0) return p;
                if (what == 1 && s.stakeOf(p) != 0) return p;
                if (what == 2) {
                    (, uint64 availableAt) = s.pendingUnstake(p);
                    if (availableAt != 0) return p;
                }
            }
        }
        return _provider(seed);
    }

    function _advance(uint256 seconds_) internal {
        currentTime += seconds_;
        vm.warp(currentTime);
    }

    // --- buyers ---------------------------------------------------------------------------------

    function deposit(uint256 actorSeed, uint256 payerSeed, uint256 amount) external clocked("deposit") {
        address buyer = _buyer(actorSeed);
        address payer = payerSeed % 4 == 0 ? _buyer(payerSeed / 4) : buyer; // some depositFor
        amount = bound(amount, 1, 50_000e6);
        if (usd.balanceOf(payer) < amount) usd.faucet(payer, usd.faucetMax());
        vm.prank(payer);
        if (payer == buyer) s.deposit(amount);
        else s.depositFor(buyer, amount);
        ghostDeposited += amount;
    }

    function requestWithdrawal(uint256 actorSeed, uint256 amount) external clocked("requestWithdrawal") {
        address buyer = _buyer(actorSeed);
        uint256 escrowed = s.escrow(buyer);
        if (escrowed == 0) return;
        amount = bound(amount, 1, escrowed);
        vm.prank(buyer);
        s.requestWithdrawal(amount);
    }

    function withdraw(uint256 actorSeed, uint256 waitSeconds) external clocked("withdraw") {
        _advance(bound(waitSeconds, 0, 2 * uint256(withdrawalDelay)));
        address buyer = _buyerWithExit(actorSeed);
        (uint192 pending, uint64 availableAt) = s.pendingWithdrawal(buyer);
        uint256 escrowed = s.escrow(buyer);
        uint256 expected = pending < escrowed ? pending : escrowed;
        bool shouldPay = availableAt != 0 && block.timestamp >= availableAt
            && block.timestamp >= uint256(ghostUnpausedAt) + withdrawalDelay && expected > 0;
        uint256 before = usd.balanceOf(buyer);
        vm.prank(buyer);
        try s.withdraw() {
            if (!shouldPay) _flag("withdraw paid when it should not");
            if (usd.balanceOf(buyer) - before != expected) _flag("withdraw paid a wrong amount");
            ghostWithdrawn += expected;
            paidWithdrawals += 1;
        } catch {
            if (shouldPay) _flag("withdraw failed when it should pay");
        }
    }

    // --- providers ------------------------------------------------------------------------------

    function registerProvider(uint256 actorSeed, bytes32 key) external clocked("register") {
        address provider = _provider(actorSeed);
        if (key == bytes32(0)) key = keccak256(abi.encode(provider));
        bool registered = s.providerKey(provider) != bytes32(0);
        vm.prank(provider);
        try s.registerProvider(key) {
            if (registered) _flag("registered twice");
            ghostKey[provider] = key;
        } catch {
            if (!registered) _flag("registration failed");
        }
    }

    /// Rotates a provider's key: mostly a registered provider to a fresh key, sometimes to zero
    /// or to the key bound now, or an unregistered provider, each of which must fail with its own
    /// error. Whatever happens, stake, earnings and standing stay as they were.
    function rotateKey(uint256 actorSeed, bytes32 key, uint8 kind) external clocked("rotateKey") {
        address provider = actorSeed % 4 != 0 ? _registeredOr(actorSeed) : address(0);
        if (provider == address(0)) provider = _provider(actorSeed);
        bytes32 oldKey = s.providerKey(provider);
        kind = uint8(bound(kind, 0, 7));
        if (kind == 6) key = bytes32(0);
        else if (kind == 7) key = oldKey;
        else if (key == bytes32(0) || key == oldKey) key = keccak256(abi.encode(provider, key, "rotated"));
        bytes4 expected;
        if (oldKey == bytes32(0)) expected = ISettlement.UnknownProvider.selector;
        else if (key == bytes32(0)) expected = ISettlement.ZeroKey.selector;
        else if (key == oldKey) expected = ISettlement.SameKey.selector;
        uint256 staked = s.stakeOf(provider);
        uint256 earned = s.earnings(provider);
        bool active = s.isActiveProvider(provider);
        vm.prank(provider);
        try s.rotateProviderKey(key) {
            if (expected != bytes4(0)) _flag("an invalid rotation succeeded");
            ghostKey[provider] = key;
            rotations += 1;
        } catch (bytes memory reason) {
            if (expected == bytes4(0)) _flag("a valid rotation failed");
            // forge-lint: disable-next-line(unsafe-typecast)
            else if (bytes4(reason) != expected) _flag("an invalid rotation failed for another reason");
        }
        if (s.providerKey(provider) != ghostKey[provider]) _flag("the bound key is not the last one bound");
        if (s.stakeOf(provider) != staked || s.earnings(provider) != earned) _flag("rotation moved value");
        if (s.isActiveProvider(provider) != active) _flag("rotation changed standing");
    }

    function stake(uint256 actorSeed, uint256 amount) external clocked("stake") {
        address provider = _provider(actorSeed);
        if (s.providerKey(provider) == bytes32(0)) return;
        uint256 balance = net.balanceOf(provider);
        if (balance == 0) return;
        amount = bound(amount, 1, balance < 5_000e18 ? balance : 5_000e18);
        vm.prank(provider);
        s.stake(amount);
        ghostStaked += amount;
    }

    function requestUnstake(uint256 actorSeed, uint256 amount) external clocked("requestUnstake") {
        address provider = _providerWith(actorSeed, 1);
        uint256 staked = s.stakeOf(provider);
        if (staked == 0) return;
        amount = bound(amount, 1, staked);
        vm.prank(provider);
        s.requestUnstake(amount);
    }

    function completeUnstake(uint256 actorSeed, uint256 waitSeconds) external clocked("completeUnstake") {
        _advance(bound(waitSeconds, 0, 2 * uint256(unstakeDelay)));
        address provider = _providerWith(actorSeed, 2);
        (uint192 pending, uint64 availableAt) = s.pendingUnstake(provider);
        uint256 staked = s.stakeOf(provider);
        uint256 expected = pending < staked ? pending : staked;
        bool shouldPay = availableAt != 0 && block.timestamp >= availableAt
            && block.timestamp >= uint256(ghostUnpausedAt) + unstakeDelay && expected > 0;
        uint256 before = net.balanceOf(provider);
        vm.prank(provider);
        try s.completeUnstake() {
            if (!shouldPay) _flag("unstake paid when it should not");
            if (net.balanceOf(provider) - before != expected) _flag("unstake paid a wrong amount");
            ghostUnstaked += expected;
            paidUnstakes += 1;
        } catch {
            if (shouldPay) _flag("unstake failed when it should pay");
        }
    }

    function withdrawEarnings(uint256 actorSeed) external clocked("withdrawEarnings") {
        address provider = _providerWith(actorSeed, 0);
        uint256 owed = s.earnings(provider);
        uint256 before = usd.balanceOf(provider);
        vm.prank(provider);
        try s.withdrawEarnings() {
            if (owed == 0) _flag("earnings paid from nothing");
            if (usd.balanceOf(provider) - before != owed) _flag("earnings paid a wrong amount");
            ghostEarningsWithdrawn += owed;
            paidEarnings += 1;
        } catch {
            if (owed != 0) _flag("earnings withdrawal failed");
        }
    }

    // --- operator, verifier, admin --------------------------------------------------------------

    /// Settles the next epoch with a random balanced batch over the buyers with escrow and the
    /// registered providers, a random fee within the limit and random rewards within the cap
    /// to registered providers, active or not (an inactive one's reward is forfeited).
    function settle(uint256 seed) external clocked("settle") {
        ISettlement.EpochBatch memory b = _randomBatch(seed);
        uint256 debited;
        for (uint256 i; i < b.debits.length; ++i) {
            debited += b.debits[i].amount;
        }
        uint256 rewarded;
        for (uint256 i; i < b.rewards.length; ++i) {
            if (s.isActiveProvider(b.rewards[i].provider)) rewarded += b.rewards[i].amount;
            else forfeitedRewards += 1;
        }
        vm.prank(operator);
        try s.settleEpoch(b) {
            ghostSettles += 1;
            ghostDebited += debited;
            ghostCredited += debited - b.fee;
            ghostFees += b.fee;
            ghostRewards += rewarded;
            if (debited > 0) debitingSettles += 1;
        } catch {
            _flag("a valid batch was rejected");
        }
    }

    /// Submits a batch that must fail (replayed, skipped ahead, unbalanced, overdrawn, fee too
    /// high, rewards over the cap, credit to an unknown provider) and checks that it did.
    function settleInvalid(uint256 seed, uint8 kind) external clocked("settleInvalid") {
        ISettlement.EpochBatch memory b = _randomBatch(seed);
        uint64 next = s.lastSettledEpoch() + 1;
        kind = uint8(bound(kind, 0, 6));
        bytes4[7] memory expected = [
            ISettlement.EpochAlreadySettled.selector,
            ISettlement.EpochOutOfOrder.selector,
            ISettlement.UnbalancedBatch.selector,
            ISettlement.InsufficientEscrow.selector,
            ISettlement.FeeExceedsLimit.selector,
            ISettlement.RewardCapExceeded.selector,
            ISettlement.UnknownProvider.selector
        ];
        if (kind == 0) {
            if (next == 1) return;
            b.epoch = uint64(bound(seed, 1, next - 1)); // replay
        } else if (kind == 1) {
            b.epoch = uint64(bound(seed, next + 1, type(uint64).max)); // skip ahead
        } else if (kind == 2) {
            b.fee += 1; // unbalanced
        } else if (kind == 3) {
            if (b.debits.length == 0) return;
            address buyer = b.debits[0].buyer; // overdraw by one
            b.debits[0].amount = s.escrow(buyer) + 1;
            b.credits = _oneCredit(b.credits.length == 0 ? _provider(seed) : b.credits[0].provider, b.debits);
            if (s.providerKey(b.credits[0].provider) == bytes32(0)) return;
            b.fee = 0;
        } else if (kind == 4) {
            uint256 debited;
            for (uint256 i; i < b.debits.length; ++i) {
                debited += b.debits[i].amount;
            }
            if (debited == 0 || b.credits.length == 0) return;
            uint256 limit = debited * maxFeeBps / 10_000;
            // fee one past the limit, the first credit shrunk to keep the batch balanced
            uint256 extra = limit + 1 - b.fee;
            if (b.credits[0].amount < extra) return;
            b.credits[0].amount -= extra;
            b.fee = limit + 1;
        } else if (kind == 5) {
            b.rewards = _oneCredit(_activeOr(seed), new ISettlement.Debit[](0));
            if (b.rewards[0].provider == address(0)) return;
            b.rewards[0].amount = cap + 1;
        } else {
            b.credits = new ISettlement.Credit[](1);
            b.credits[0] = ISettlement.Credit(address(uint160(uint256(keccak256(abi.encode(seed))))), 0);
        }
        vm.prank(operator);
        try s.settleEpoch(b) {
            _flag("an invalid batch settled");
        } catch (bytes memory reason) {
            // forge-lint: disable-next-line(unsafe-typecast)
            if (bytes4(reason) != expected[kind]) _flag("an invalid batch failed for another reason");
            ghostRejectedBatches += 1;
        }
    }

    function slash(uint256 actorSeed, uint256 amount) external clocked("slash") {
        address provider = _providerWith(actorSeed, 1);
        uint256 staked = s.stakeOf(provider);
        if (staked == 0) return;
        amount = bound(amount, 1, staked);
        bytes32 evidence = keccak256(abi.encode("evidence", ++_evidenceNonce));
        vm.prank(verifier);
        s.slash(provider, amount, evidence);
        ghostSlashed += amount;
        // The same evidence never slashes twice.
        vm.prank(verifier);
        try s.slash(provider, 1, evidence) {
            _flag("evidence reused");
        } catch (bytes memory reason) {
            // forge-lint: disable-next-line(unsafe-typecast)
            if (bytes4(reason) != ISettlement.EvidenceAlreadyUsed.selector) {
                _flag("evidence reuse failed for another reason");
            }
        }
    }

    function withdrawFees() external clocked("withdrawFees") {
        uint256 accrued = s.accruedFees();
        vm.prank(admin);
        try s.withdrawFees(treasury) {
            if (accrued == 0) _flag("fees paid from nothing");
            ghostFeesWithdrawn += accrued;
        } catch {
            if (accrued != 0) _flag("fee withdrawal failed");
        }
    }

    /// Pauses for a while and unpauses in one action (so every other action runs unpaused):
    /// while paused no exit is taken, and the handler's model then holds every exit a full delay
    /// after the unpause.
    function pauseFor(uint256 actorSeed, uint256 pauseSeconds, uint256 amount) external clocked("pauseFor") {
        s.pause();
        address buyer = _buyerWithExit(actorSeed);
        vm.prank(buyer);
        try s.withdraw() {
            _flag("withdraw paid while paused");
        } catch (bytes memory reason) {
            // forge-lint: disable-next-line(unsafe-typecast)
            if (bytes4(reason) != Pausable.EnforcedPause.selector) _flag("paused withdraw failed otherwise");
        }
        address provider = _providerWith(actorSeed, 2);
        vm.prank(provider);
        try s.completeUnstake() {
            _flag("unstake paid while paused");
        } catch (bytes memory reason) {
            // forge-lint: disable-next-line(unsafe-typecast)
            if (bytes4(reason) != Pausable.EnforcedPause.selector) _flag("paused unstake failed otherwise");
        }
        // Exits may still be requested while paused.
        uint256 escrowed = s.escrow(buyer);
        if (amount % 2 == 0 && escrowed != 0) {
            vm.prank(buyer);
            s.requestWithdrawal(bound(amount, 1, escrowed));
        }
        _advance(bound(pauseSeconds, 0, 2 * uint256(unstakeDelay)));
        s.unpause();
        ghostUnpausedAt = uint64(block.timestamp);
        pauses += 1;
    }

    // --- batch building -------------------------------------------------------------------------

    function _registeredOr(uint256 seed) internal view returns (address) {
        for (uint256 k; k < _providers.length; ++k) {
            address p = _provider(_next(seed, k, _providers.length));
            if (s.providerKey(p) != bytes32(0)) return p;
        }
        return address(0);
    }

    function _activeOr(uint256 seed) internal view returns (address) {
        for (uint256 k; k < _providers.length; ++k) {
            address p = _provider(_next(seed, k, _providers.length));
            if (s.isActiveProvider(p)) return p;
        }
        return address(0);
    }

    function _oneCredit(address provider, ISettlement.Debit[] memory debits)
        internal
        pure
        returns (ISettlement.Credit[] memory credits)
    {
        uint256 total;
        for (uint256 i; i < debits.length; ++i) {
            total += debits[i].amount;
        }
        credits = new ISettlement.Credit[](1);
        credits[0] = ISettlement.Credit(provider, total);
    }

    function _randomBatch(uint256 seed) internal view returns (ISettlement.EpochBatch memory b) {
        b.epoch = s.lastSettledEpoch() + 1;
        b.receiptsRoot = keccak256(abi.encode("root", seed));
        // forge-lint: disable-next-line(unsafe-typecast)
        b.receiptCount = uint64(seed % 10_000);
        address[] memory registered = _registered();
        uint256 debited;
        (b.debits, debited) = _randomDebits(seed, registered.length);
        uint256 rf = uint256(keccak256(abi.encode(seed, "fee")));
        uint256 limit = debited * maxFeeBps / 10_000;
        b.fee = rf % 5 == 0 ? limit : bound(rf, 0, limit);
        b.credits = _randomCredits(seed, registered, debited - b.fee);
        b.rewards = _randomRewards(seed, registered);
    }

    function _registered() internal view returns (address[] memory registered) {
        registered = new address[](_providers.length);
        uint256 n;
        for (uint256 k; k < _providers.length; ++k) {
            if (s.providerKey(_providers[k]) != bytes32(0)) registered[n++] = _providers[k];
        }
        assembly ("memory-safe") {
            mstore(registered, n)
        }
    }

    /// Each buyer with escrow, with probability 3/4, for a random share of it (often all of it);
    /// the first buyer may appear twice. With no registered provider there is nobody to pay.
    function _randomDebits(uint256 seed, uint256 nReg)
        internal
        view
        returns (ISettlement.Debit[] memory debits, uint256 debited)
    {
        uint256 nb = _buyers.length;
        debits = new ISettlement.Debit[](nReg == 0 ? 0 : nb + 1);
        uint256 nd;
        uint256 firstBuyerDebit;
        for (uint256 i; i < debits.length; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, "debit", i)));
            address buyer = _buyers[i % nb];
            uint256 available = s.escrow(buyer);
            if (i == nb) available -= firstBuyerDebit; // the first buyer's second entry
            if (available == 0 || r % 4 == 0) continue;
            uint256 amount = r % 3 == 0 ? available : bound(r >> 8, 0, available);
            if (i == 0) firstBuyerDebit = amount;
            debits[nd++] = ISettlement.Debit(buyer, amount);
            debited += amount;
        }
        assembly ("memory-safe") {
            mstore(debits, nd)
        }
    }

    /// `amount` split at random among 1..n+1 entries for registered providers (with repeats).
    function _randomCredits(uint256 seed, address[] memory registered, uint256 amount)
        internal
        pure
        returns (ISettlement.Credit[] memory credits)
    {
        uint256 nReg = registered.length;
        uint256 nc = nReg == 0 ? 0 : 1 + (seed >> 16) % (nReg + 1);
        credits = new ISettlement.Credit[](nc);
        for (uint256 j; j < nc; ++j) {
            uint256 r = uint256(keccak256(abi.encode(seed, "credit", j)));
            uint256 c = j + 1 == nc ? amount : bound(r, 0, amount);
            amount -= c;
            credits[j] = ISettlement.Credit(registered[r % nReg], c);
        }
    }

    /// Up to two rewards to registered providers, within the cap together.
    function _randomRewards(uint256 seed, address[] memory registered)
        internal
        view
        returns (ISettlement.Credit[] memory rewards)
    {
        uint256 nReg = registered.length;
        uint256 nr = nReg == 0 ? 0 : (seed >> 32) % 3;
        rewards = new ISettlement.Credit[](nr);
        uint256 budget = cap;
        for (uint256 j; j < nr; ++j) {
            uint256 r = uint256(keccak256(abi.encode(seed, "reward", j)));
            uint256 amount = bound(r, 0, budget);
            budget -= amount;
            rewards[j] = ISettlement.Credit(registered[r % nReg], amount);
        }
    }

    function logCalls() external view {
        console.log("deposit", calls["deposit"]);
        console.log("requestWithdrawal", calls["requestWithdrawal"]);
        console.log("withdraw", calls["withdraw"]);
        console.log("register", calls["register"]);
        console.log("rotateKey", calls["rotateKey"]);
        console.log("stake", calls["stake"]);
        console.log("requestUnstake", calls["requestUnstake"]);
        console.log("completeUnstake", calls["completeUnstake"]);
        console.log("withdrawEarnings", calls["withdrawEarnings"]);
        console.log("settle", calls["settle"]);
        console.log("settleInvalid", calls["settleInvalid"]);
        console.log("slash", calls["slash"]);
        console.log("withdrawFees", calls["withdrawFees"]);
        console.log("pauseFor", calls["pauseFor"]);
        console.log("epochs settled", ghostSettles);
        console.log("epochs with debits", debitingSettles);
        console.log("withdrawals paid", paidWithdrawals);
        console.log("unstakes paid", paidUnstakes);
        console.log("earnings paid", paidEarnings);
        console.log("rewards forfeited", forfeitedRewards);
        console.log("batches rejected", ghostRejectedBatches);
        console.log("keys rotated", rotations);
    }
}

/// The handler keeps every call within what the contract accepts, so a revert is a finding.
/// forge-config: default.invariant.fail-on-revert = true
/// forge-config: ci.invariant.fail-on-revert = true
contract SettlementInvariantTest is Base {
    SettlementHandler internal handler;
    address[] internal buyerList;
    address[] internal providerList;

    function setUp() public override {
        super.setUp();
        buyerList.push(alice);
        buyerList.push(bob);
        buyerList.push(makeAddr("carol"));
        buyerList.push(makeAddr("dave"));
        buyerList.push(makeAddr("erin"));
        providerList.push(prov1);
        providerList.push(prov2);
        providerList.push(makeAddr("prov3"));
        providerList.push(makeAddr("prov4"));
        for (uint256 i = 2; i < buyerList.length; ++i) {
            _fundBuyer(buyerList[i], BUYER_FUNDS);
        }
        for (uint256 j = 2; j < providerList.length; ++j) {
            _fundProvider(providerList[j], PROVIDER_NET);
        }
        // One provider starts registered and staked, so that settling has someone to pay early.
        _register(prov1, KEY_1);
        _stake(prov1, MIN_STAKE);

        handler = new SettlementHandler(settlement, operator, verifier, admin, treasury, buyerList, providerList);
        vm.label(address(handler), "Handler");
        vm.prank(admin);
        settlement.grantRole(PAUSER_ROLE, address(handler));

        bytes4[] memory selectors = new bytes4[](15);
        selectors[0] = SettlementHandler.deposit.selector;
        selectors[1] = SettlementHandler.requestWithdrawal.selector;
        selectors[2] = SettlementHandler.withdraw.selector;
        selectors[3] = SettlementHandler.registerProvider.selector;
        selectors[4] = SettlementHandler.stake.selector;
        selectors[5] = SettlementHandler.requestUnstake.selector;
        selectors[6] = SettlementHandler.completeUnstake.selector;
        selectors[7] = SettlementHandler.withdrawEarnings.selector;
        selectors[8] = SettlementHandler.settle.selector;
        selectors[9] = SettlementHandler.settle.selector; // settling twice as likely
        selectors[10] = SettlementHandler.settleInvalid.selector;
        selectors[11] = SettlementHandler.slash.selector;
        selectors[12] = SettlementHandler.withdrawFees.selector;
        selectors[13] = SettlementHandler.rotateKey.selector;
        selectors[14] = SettlementHandler.pauseFor.selector;
        targetContract(address(handler));
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /// (a) The payment tokens held are exactly escrow + earnings + fees, and exactly what the
    ///     ghosts say came in minus what went out.
    function invariant_paymentTokensBackTheBooks() public view {
        uint256 held = usd.balanceOf(address(settlement));
        assertGe(held, settlement.totalEscrow() + settlement.totalEarnings() + settlement.accruedFees());
        assertEq(
            held,
            settlement.totalEscrow() + settlement.totalEarnings() + settlement.accruedFees(),
            "held != escrow + earnings + fees"
        );
        assertEq(
            held,
            handler.ghostDeposited() - handler.ghostWithdrawn() - handler.ghostEarningsWithdrawn()
                - handler.ghostFeesWithdrawn(),
            "held != in - out"
        );
        assertEq(settlement.accruedFees(), handler.ghostFees() - handler.ghostFeesWithdrawn(), "accrued fees");
    }

    /// (b) The network tokens held are exactly the stake; supply moves only by rewards and slashes.
    function invariant_networkTokensBackTheStake() public view {
        assertEq(net.balanceOf(address(settlement)), settlement.totalStaked(), "held != staked");
        assertEq(
            settlement.totalStaked(),
            MIN_STAKE + handler.ghostStaked() - handler.ghostUnstaked() - handler.ghostSlashed(),
            "staked != in - out - slashed"
        );
        assertEq(
            net.totalSupply(),
            GENESIS_SUPPLY + handler.ghostRewards() - handler.ghostSlashed(),
            "supply != genesis + rewards - slashed"
        );
    }

    /// (c) Settlement only moves value: everything debited was credited or taken as fee, and
    ///     fees never passed their limit.
    function invariant_debitsEqualCreditsPlusFees() public view {
        assertEq(
            settlement.totalDebited(), settlement.totalCredited() + settlement.totalFees(), "debited != credited + fees"
        );
        assertEq(settlement.totalDebited(), handler.ghostDebited(), "debited");
        assertEq(settlement.totalCredited(), handler.ghostCredited(), "credited");
        assertEq(settlement.totalFees(), handler.ghostFees(), "fees");
        assertLe(settlement.totalFees() * 10_000, settlement.totalDebited() * MAX_FEE_BPS);
    }

    /// (d) The totals are the sums over the accounts.
    function invariant_totalsAreSumsOfAccounts() public view {
        uint256 escrowSum;
        for (uint256 i; i < buyerList.length; ++i) {
            escrowSum += settlement.escrow(buyerList[i]);
        }
        uint256 earningsSum;
        uint256 stakeSum;
        for (uint256 j; j < providerList.length; ++j) {
            earningsSum += settlement.earnings(providerList[j]);
            stakeSum += settlement.stakeOf(providerList[j]);
        }
        assertEq(escrowSum, settlement.totalEscrow(), "sum of escrow");
        assertEq(earningsSum, settlement.totalEarnings(), "sum of earnings");
        assertEq(stakeSum, settlement.totalStaked(), "sum of stake");
    }

    /// (e) Every successful settle advanced the epoch by exactly one.
    function invariant_epochCountMatchesSettles() public view {
        assertEq(uint256(settlement.lastSettledEpoch()), uint256(handler.ghostSettles()));
    }

    /// (f) Every provider registered has a nonzero key, the last one it bound (by registration or
    ///     rotation); a provider never registered has none.
    function invariant_providerKeysAreTheLastBound() public view {
        for (uint256 j; j < providerList.length; ++j) {
            address p = providerList[j];
            bytes32 last = handler.ghostKey(p);
            assertEq(settlement.providerKey(p), last, "bound key != last bound");
            if (last != bytes32(0)) {
                assertTrue(settlement.providerKey(p) != bytes32(0), "a registered key went to zero");
            }
        }
        assertTrue(settlement.providerKey(prov1) != bytes32(0), "prov1, registered in setUp, keeps a key");
    }

    /// Every handler action ended as the model predicted.
    function invariant_noUnexpectedOutcome() public view {
        assertEq(handler.unexpected(), 0, handler.firstUnexpected());
    }

    function afterInvariant() public view {
        handler.logCalls();
    }
}
