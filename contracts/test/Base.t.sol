// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {NetworkToken} from "../src/NetworkToken.sol";
import {PaymentToken} from "../src/PaymentToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {INetworkToken} from "../src/interfaces/INetworkToken.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {Test} from "./utils/Test.sol";

/// @dev Deploys the payment token, the network token and the settlement contract the way a
///      deployment does (the network token's minter bound to settlement), hands each role to
///      its own account, and funds two buyers and two providers.
abstract contract Base is Test {
    // Parameters of the deployment under test.
    uint64 internal constant WITHDRAWAL_DELAY = 1 days;
    uint64 internal constant UNSTAKE_DELAY = 7 days;
    uint256 internal constant MIN_STAKE = 1_000e18;
    uint16 internal constant MAX_FEE_BPS = 500; // 5 %
    uint256 internal constant EPOCH_MINT_CAP = 10_000e18;
    uint256 internal constant GENESIS_SUPPLY = 100_000_000e18;
    uint256 internal constant FAUCET_MAX = 1_000_000e6; // one million tUSD a call

    // What each funded actor starts with.
    uint256 internal constant BUYER_FUNDS = 1_000_000e6;
    uint256 internal constant PROVIDER_NET = 1_000_000e18;

    bytes32 internal constant KEY_1 = keccak256("provider-1 ed25519 public key");
    bytes32 internal constant KEY_2 = keccak256("provider-2 ed25519 public key");

    PaymentToken internal usd;
    NetworkToken internal net;
    Settlement internal settlement;

    address internal admin;
    address internal operator;
    address internal verifier;
    address internal pauser;
    address internal treasury;
    address internal stranger;
    address internal alice; // buyer
    address internal bob; // buyer
    address internal prov1; // provider
    address internal prov2; // provider

    bytes32 internal OPERATOR_ROLE;
    bytes32 internal VERIFIER_ROLE;
    bytes32 internal PAUSER_ROLE;
    bytes32 internal constant DEFAULT_ADMIN_ROLE = 0x00;

    function setUp() public virtual {
        admin = makeAddr("admin");
        operator = makeAddr("operator");
        verifier = makeAddr("verifier");
        pauser = makeAddr("pauser");
        treasury = makeAddr("treasury");
        stranger = makeAddr("stranger");
        alice = makeAddr("alice");
        bob = makeAddr("bob");
        prov1 = makeAddr("prov1");
        prov2 = makeAddr("prov2");

        vm.warp(1_750_000_000); // a realistic clock, far from zero
        _deploy();
        _fundBuyer(alice, BUYER_FUNDS);
        _fundBuyer(bob, BUYER_FUNDS);
        _fundProvider(prov1, PROVIDER_NET);
        _fundProvider(prov2, PROVIDER_NET);
    }

    function _deploy() internal {
        usd = new PaymentToken("Test USD", "tUSD", true, FAUCET_MAX, admin, 0);
        net = new NetworkToken(admin, GENESIS_SUPPLY, EPOCH_MINT_CAP);
        settlement = new Settlement(admin, IERC20(address(usd)), INetworkToken(address(net)), _config());
        net.bindMinter(address(settlement)); // this contract deployed the network token

        OPERATOR_ROLE = settlement.OPERATOR_ROLE();
        VERIFIER_ROLE = settlement.VERIFIER_ROLE();
        PAUSER_ROLE = settlement.PAUSER_ROLE();

        vm.startPrank(admin);
        settlement.grantRole(OPERATOR_ROLE, operator);
        settlement.grantRole(VERIFIER_ROLE, verifier);
        settlement.grantRole(PAUSER_ROLE, pauser);
        // The admin keeps only the admin role, so that each role is tested on its own account.
        settlement.renounceRole(OPERATOR_ROLE, admin);
        settlement.renounceRole(VERIFIER_ROLE, admin);
        settlement.renounceRole(PAUSER_ROLE, admin);
        vm.stopPrank();

        vm.label(address(usd), "tUSD");
        vm.label(address(net), "JOULE");
        vm.label(address(settlement), "Settlement");
    }

    /// @dev Deployments under test mint rewards as often as epochs settle unless a suite says.
    function _minRewardInterval() internal pure virtual returns (uint64) {
        return 0;
    }

    function _config() internal pure returns (Settlement.Config memory) {
        return Settlement.Config({
            withdrawalDelay: WITHDRAWAL_DELAY,
            unstakeDelay: UNSTAKE_DELAY,
            minProviderStake: MIN_STAKE,
            maxFeeBps: MAX_FEE_BPS,
            minRewardInterval: _minRewardInterval()
        });
    }

    // --- actors ---------------------------------------------------------------------------------

    /// @dev Gives `buyer` payment tokens through the faucet and approves settlement for them.
    function _fundBuyer(address buyer, uint256 amount) internal {
        while (amount > 0) {
            uint256 chunk = amount > FAUCET_MAX ? FAUCET_MAX : amount;
            usd.faucet(buyer, chunk);
            amount -= chunk;
        }
        vm.prank(buyer);
        usd.approve(address(settlement), type(uint256).max);
    }

    /// @dev Gives `provider` network tokens from the genesis holder and approves settlement.
    function _fundProvider(address provider, uint256 amount) internal {
        vm.prank(admin);
        assertTrue(net.transfer(provider, amount));
        vm.prank(provider);
        net.approve(address(settlement), type(uint256).max);
    }

    function _deposit(address buyer, uint256 amount) internal {
        vm.prank(buyer);
        settlement.deposit(amount);
    }

    function _register(address provider, bytes32 key) internal {
        vm.prank(provider);
        settlement.registerProvider(key);
    }

    function _stake(address provider, uint256 amount) internal {
        vm.prank(provider);
        settlement.stake(amount);
    }

    /// @dev Registers both providers with the minimum stake and gives both buyers escrow.
    function _market(uint256 aliceEscrow, uint256 bobEscrow) internal {
        _register(prov1, KEY_1);
        _register(prov2, KEY_2);
        _stake(prov1, MIN_STAKE);
        _stake(prov2, MIN_STAKE);
        if (aliceEscrow > 0) _deposit(alice, aliceEscrow);
        if (bobEscrow > 0) _deposit(bob, bobEscrow);
    }

    // --- batches --------------------------------------------------------------------------------

    function _emptyBatch(uint64 epoch) internal pure returns (ISettlement.EpochBatch memory b) {
        b.epoch = epoch;
        b.receiptsRoot = keccak256(abi.encode("receipts of epoch", epoch));
        b.debits = new ISettlement.Debit[](0);
        b.credits = new ISettlement.Credit[](0);
        b.rewards = new ISettlement.Credit[](0);
    }

    /// @dev One buyer pays one provider `credit`, the protocol takes `fee`.
    function _simpleBatch(uint64 epoch, address buyer, address provider, uint256 credit, uint256 fee)
        internal
        pure
        returns (ISettlement.EpochBatch memory b)
    {
        b = _emptyBatch(epoch);
        b.receiptCount = 1;
        b.fee = fee;
        b.debits = new ISettlement.Debit[](1);
        b.debits[0] = ISettlement.Debit(buyer, credit + fee);
        b.credits = new ISettlement.Credit[](1);
        b.credits[0] = ISettlement.Credit(provider, credit);
    }

    function _settle(ISettlement.EpochBatch memory b) internal {
        vm.prank(operator);
        settlement.settleEpoch(b);
    }

    /// @dev The most fee a batch debiting `debited` may take.
    function _feeLimit(uint256 debited) internal pure returns (uint256) {
        return debited * MAX_FEE_BPS / 10_000;
    }

    // --- accounting -----------------------------------------------------------------------------

    /// @dev The contract's books match the tokens it holds, to the unit.
    function _assertSolvent() internal view {
        assertEq(
            usd.balanceOf(address(settlement)),
            settlement.totalEscrow() + settlement.totalEarnings() + settlement.accruedFees(),
            "payment tokens held != escrow + earnings + fees"
        );
        assertEq(net.balanceOf(address(settlement)), settlement.totalStaked(), "network tokens != stake");
        assertEq(
            settlement.totalDebited(), settlement.totalCredited() + settlement.totalFees(), "debited != credited + fees"
        );
    }
}
