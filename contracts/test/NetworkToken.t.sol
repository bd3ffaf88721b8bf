// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {NetworkToken} from "../src/NetworkToken.sol";
import {INetworkToken} from "../src/interfaces/INetworkToken.sol";
import {Test} from "./utils/Test.sol";

contract NetworkTokenTest is Test {
    uint256 internal constant GENESIS = 1_000_000e18;
    uint256 internal constant CAP = 5_000e18;

    NetworkToken internal token; // deployed by this contract
    address internal genesisHolder;
    address internal minter;
    address internal user;
    address internal stranger;

    function setUp() public {
        genesisHolder = makeAddr("genesis");
        minter = makeAddr("minter");
        user = makeAddr("user");
        stranger = makeAddr("stranger");
        token = new NetworkToken(genesisHolder, GENESIS, CAP);
    }

    function _bound() internal {
        token.bindMinter(minter);
    }

    function test_metadata() public view {
        assertEq(token.name(), "Joule Network Token");
        assertEq(token.symbol(), "JOULE");
        assertEq(uint256(token.decimals()), 18);
        assertEq(token.epochMintCap(), CAP);
        assertEq(token.minter(), address(0));
    }

    function test_constructor_mintsGenesis() public {
        assertEq(token.balanceOf(genesisHolder), GENESIS);
        assertEq(token.totalSupply(), GENESIS);
        NetworkToken empty = new NetworkToken(address(0), 0, CAP);
        assertEq(empty.totalSupply(), 0);
    }

    // --- bindMinter -----------------------------------------------------------------------------

    function test_bindMinter_bindsOnce() public {
        vm.expectEmit(address(token));
        emit INetworkToken.MinterBound(minter);
        _bound();
        assertEq(token.minter(), minter);

        vm.expectRevert(abi.encodeWithSelector(INetworkToken.MinterAlreadyBound.selector, minter));
        token.bindMinter(stranger);
        assertEq(token.minter(), minter);
    }

    function test_bindMinter_revertsForNonDeployer() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(INetworkToken.NotMinter.selector, stranger));
        token.bindMinter(stranger);
        // Not even the genesis holder.
        vm.prank(genesisHolder);
        vm.expectRevert(abi.encodeWithSelector(INetworkToken.NotMinter.selector, genesisHolder));
        token.bindMinter(genesisHolder);
        assertEq(token.minter(), address(0));
    }

    function test_bindMinter_revertsOnZero() public {
        vm.expectRevert(INetworkToken.ZeroMinter.selector);
        token.bindMinter(address(0));
        _bound(); // still bindable afterwards
        assertEq(token.minter(), minter);
    }

    // --- mintReward -----------------------------------------------------------------------------

    function test_mintReward_mintsAndCounts() public {
        _bound();
        vm.expectEmit(address(token));
        emit IERC20.Transfer(address(0), user, 100e18);
        vm.expectEmit(address(token));
        emit INetworkToken.RewardMinted(7, user, 100e18);
        vm.prank(minter);
        token.mintReward(user, 100e18, 7);
        assertEq(token.balanceOf(user), 100e18);
        assertEq(token.mintedInEpoch(7), 100e18);
        assertEq(token.mintedInEpoch(6), 0);
        assertEq(token.totalSupply(), GENESIS + 100e18);
    }

    function test_mintReward_revertsBeforeMinterIsBound() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(INetworkToken.NotMinter.selector, stranger));
        token.mintReward(stranger, 1, 1);
        // An unbound minter (zero) never matches, not even a call from the zero address.
        vm.prank(address(0));
        vm.expectRevert(abi.encodeWithSelector(INetworkToken.NotMinter.selector, address(0)));
        token.mintReward(user, 1, 1);
    }

    function test_mintReward_revertsForNonMinter() public {
        _bound();
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(INetworkToken.NotMinter.selector, stranger));
        token.mintReward(stranger, 1, 1);
        // The deployer binds the minter but is not the minter.
        vm.expectRevert(abi.encodeWithSelector(INetworkToken.NotMinter.selector, address(this)));
        token.mintReward(address(this), 1, 1);
    }

    function test_mintReward_capPerEpoch() public {
        _bound();
        vm.startPrank(minter);
        token.mintReward(user, 3_000e18, 1);
        token.mintReward(stranger, 2_000e18, 1); // exactly the cap
        vm.expectRevert(abi.encodeWithSelector(INetworkToken.EpochMintCapExceeded.selector, 1, CAP, 1, CAP));
        token.mintReward(user, 1, 1);
        // Each epoch has its own cap.
        token.mintReward(user, CAP, 2);
        vm.expectRevert(abi.encodeWithSelector(INetworkToken.EpochMintCapExceeded.selector, 3, 0, CAP + 1, CAP));
        token.mintReward(user, CAP + 1, 3);
        vm.stopPrank();
        assertEq(token.mintedInEpoch(1), CAP);
        assertEq(token.mintedInEpoch(2), CAP);
        assertEq(token.mintedInEpoch(3), 0);
        assertEq(token.totalSupply(), GENESIS + 2 * CAP);
    }

    function test_mintReward_revertsOnOverflowingAmount() public {
        _bound();
        vm.prank(minter);
        token.mintReward(user, 1, 1);
        vm.prank(minter);
        vm.expectRevert(abi.encodeWithSignature("Panic(uint256)", 0x11));
        token.mintReward(user, type(uint256).max, 1);
    }

    function testFuzz_mintReward_neverExceedsCap(uint64 epoch, uint256 a, uint256 b) public {
        _bound();
        a = bound(a, 0, CAP);
        b = bound(b, 0, 2 * CAP);
        vm.startPrank(minter);
        token.mintReward(user, a, epoch);
        if (a + b > CAP) {
            vm.expectRevert(abi.encodeWithSelector(INetworkToken.EpochMintCapExceeded.selector, epoch, a, b, CAP));
            token.mintReward(user, b, epoch);
        } else {
            token.mintReward(user, b, epoch);
        }
        vm.stopPrank();
        assertLe(token.mintedInEpoch(epoch), CAP);
        assertEq(token.totalSupply(), GENESIS + token.mintedInEpoch(epoch));
    }

    // --- burn -----------------------------------------------------------------------------------

    function test_burn_reducesBalanceAndSupply() public {
        vm.expectEmit(address(token));
        emit IERC20.Transfer(genesisHolder, address(0), 400e18);
        vm.prank(genesisHolder);
        token.burn(400e18);
        assertEq(token.balanceOf(genesisHolder), GENESIS - 400e18);
        assertEq(token.totalSupply(), GENESIS - 400e18);
    }

    function test_burn_revertsBeyondBalance() public {
        vm.prank(genesisHolder);
        assertTrue(token.transfer(user, 10e18));
        vm.prank(user);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, user, 10e18, 10e18 + 1));
        token.burn(10e18 + 1);
    }

    function testFuzz_burn(uint256 amount) public {
        amount = bound(amount, 0, GENESIS);
        vm.prank(genesisHolder);
        token.burn(amount);
        assertEq(token.totalSupply(), GENESIS - amount);
        assertEq(token.balanceOf(genesisHolder), GENESIS - amount);
    }
}
