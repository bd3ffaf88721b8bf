// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title Network token: stake, slashing and rewards for providers
/// @notice After its genesis supply, new tokens are minted only by the settlement contract's
///         reward schedule, and never more than `epochMintCap` for one epoch.
interface INetworkToken is IERC20 {
    /// @notice The caller is not the bound minter.
    error NotMinter(address caller);
    /// @notice The minter was already bound; it can be bound once only.
    error MinterAlreadyBound(address minter);
    /// @notice The minter address is zero.
    error ZeroMinter();
    /// @notice Minting `requested` would take epoch `epoch` past its cap (`alreadyMinted` so far).
    error EpochMintCapExceeded(uint64 epoch, uint256 alreadyMinted, uint256 requested, uint256 cap);

    /// @notice Emitted once, when the reward minter is bound.
    event MinterBound(address indexed minter);
    /// @notice Emitted for every reward mint.
    event RewardMinted(uint64 indexed epoch, address indexed to, uint256 amount);

    /// @notice Binds the only address allowed to mint rewards (the settlement contract); once.
    function bindMinter(address minter_) external;

    /// @notice Mints `amount` to `to` as part of epoch `epoch`'s rewards.
    function mintReward(address to, uint256 amount, uint64 epoch) external;

    /// @notice Burns `amount` of the caller's tokens (used for slashed stake).
    function burn(uint256 amount) external;

    /// @notice The address that may mint rewards (zero until bound).
    function minter() external view returns (address);

    /// @notice The most that may be minted for any one epoch.
    function epochMintCap() external view returns (uint256);

    /// @notice How much has been minted for `epoch` so far.
    function mintedInEpoch(uint64 epoch) external view returns (uint256);
}
