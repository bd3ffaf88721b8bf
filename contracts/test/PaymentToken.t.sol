// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {PaymentToken} from "../src/PaymentToken.sol";
import {IPaymentToken} from "../src/interfaces/IPaymentToken.sol";
import {Test} from "./utils/Test.sol";

contract PaymentTokenTest is Test {
    uint256 internal constant FAUCET_MAX = 10_000e6;

    PaymentToken internal testnet; // faucet on
    PaymentToken internal mainnet; // faucet off
    address internal holder;
    address internal user;

    function setUp() public {
        holder = makeAddr("holder");
        user = makeAddr("user");
        testnet = new PaymentToken("Test USD", "tUSD", true, FAUCET_MAX, holder, 5_000e6);
        mainnet = new PaymentToken("Test USD", "tUSD", false, FAUCET_MAX, holder, 0);
    }

    function test_metadata() public view {
        assertEq(testnet.name(), "Test USD");
        assertEq(testnet.symbol(), "tUSD");
        assertEq(uint256(testnet.decimals()), 6);
        assertEq(uint256(mainnet.decimals()), 6);
        assertTrue(testnet.faucetEnabled());
        assertFalse(mainnet.faucetEnabled());
        assertEq(testnet.faucetMax(), FAUCET_MAX);
    }

    function test_constructor_mintsInitialSupply() public view {
        assertEq(testnet.balanceOf(holder), 5_000e6);
        assertEq(testnet.totalSupply(), 5_000e6);
    }

    function test_constructor_zeroInitialSupplyMintsNothing() public {
        assertEq(mainnet.totalSupply(), 0);
        // Zero supply to the zero address is fine: nothing is minted.
        PaymentToken t = new PaymentToken("X", "X", false, 0, address(0), 0);
        assertEq(t.totalSupply(), 0);
    }

    function test_constructor_revertsOnSupplyToZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        new PaymentToken("X", "X", false, 0, address(0), 1);
    }

    function test_faucet_mints() public {
        vm.expectEmit(address(testnet));
        emit IERC20.Transfer(address(0), user, 123e6);
        vm.expectEmit(address(testnet));
        emit IPaymentToken.FaucetMinted(user, 123e6);
        vm.prank(user);
        testnet.faucet(user, 123e6);
        assertEq(testnet.balanceOf(user), 123e6);
        assertEq(testnet.totalSupply(), 5_000e6 + 123e6);
    }

    function test_faucet_anyoneForAnyone() public {
        vm.prank(makeAddr("someone"));
        testnet.faucet(user, 1);
        assertEq(testnet.balanceOf(user), 1);
    }

    function test_faucet_atLimit() public {
        testnet.faucet(user, FAUCET_MAX);
        testnet.faucet(user, FAUCET_MAX); // the limit is per call
        assertEq(testnet.balanceOf(user), 2 * FAUCET_MAX);
    }

    function test_faucet_revertsAboveLimit() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentToken.FaucetAmountTooLarge.selector, FAUCET_MAX + 1, FAUCET_MAX));
        testnet.faucet(user, FAUCET_MAX + 1);
    }

    function test_faucet_revertsWhenDisabled() public {
        vm.expectRevert(IPaymentToken.FaucetDisabled.selector);
        mainnet.faucet(user, 1);
        vm.expectRevert(IPaymentToken.FaucetDisabled.selector);
        mainnet.faucet(user, 0);
    }

    function test_faucet_revertsToZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        testnet.faucet(address(0), 1);
    }

    function testFuzz_faucet_mintsUpToLimit(address to, uint256 amount) public {
        vm.assume(to != address(0));
        amount = bound(amount, 0, FAUCET_MAX);
        uint256 before = testnet.balanceOf(to);
        testnet.faucet(to, amount);
        assertEq(testnet.balanceOf(to), before + amount);
    }

    function testFuzz_faucet_revertsAboveLimit(uint256 amount) public {
        amount = bound(amount, FAUCET_MAX + 1, type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(IPaymentToken.FaucetAmountTooLarge.selector, amount, FAUCET_MAX));
        testnet.faucet(user, amount);
    }

    function test_transfer_standardErc20() public {
        vm.prank(holder);
        assertTrue(testnet.transfer(user, 1_000e6));
        vm.prank(user);
        testnet.approve(holder, 400e6);
        vm.prank(holder);
        assertTrue(testnet.transferFrom(user, holder, 400e6));
        assertEq(testnet.balanceOf(user), 600e6);
        assertEq(testnet.allowance(user, holder), 0);
    }
}
