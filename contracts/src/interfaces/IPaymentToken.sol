// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title Payment token for testnets: a stable-value ERC-20 with 6 decimals
/// @notice Its faucet works only when the deployment enabled it (local and public testnets).
interface IPaymentToken is IERC20 {
    /// @notice The faucet is disabled in this deployment.
    error FaucetDisabled();
    /// @notice One faucet call asked for more than `maxAmount`.
    error FaucetAmountTooLarge(uint256 requested, uint256 maxAmount);

    /// @notice Emitted for every faucet mint.
    event FaucetMinted(address indexed to, uint256 amount);

    /// @notice Mints `amount` to `to` when the faucet is enabled, at most `faucetMax` per call.
    function faucet(address to, uint256 amount) external;

    /// @notice Whether this deployment has a faucet.
    function faucetEnabled() external view returns (bool);

    /// @notice The most one faucet call may mint.
    function faucetMax() external view returns (uint256);
}
