// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IPaymentToken} from "./interfaces/IPaymentToken.sol";

/// @title Test payment token (6 decimals) with a faucet that only testnet deployments enable
contract PaymentToken is ERC20, IPaymentToken {
    /// @inheritdoc IPaymentToken
    bool public immutable faucetEnabled;
    /// @inheritdoc IPaymentToken
    uint256 public immutable faucetMax;

    /// @param name_ token name, e.g. "Test USD"
    /// @param symbol_ token symbol, e.g. "tUSD"
    /// @param faucetEnabled_ whether anyone may mint through `faucet` (testnets only)
    /// @param faucetMax_ the most one faucet call may mint, in base units
    /// @param initialHolder receives `initialSupply` at deployment
    /// @param initialSupply base units minted at deployment
    constructor(
        string memory name_,
        string memory symbol_,
        bool faucetEnabled_,
        uint256 faucetMax_,
        address initialHolder,
        uint256 initialSupply
    ) ERC20(name_, symbol_) {
        faucetEnabled = faucetEnabled_;
        faucetMax = faucetMax_;
        if (initialSupply > 0) _mint(initialHolder, initialSupply);
    }

    /// @notice Six decimals, as the stable-value tokens it stands in for.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @inheritdoc IPaymentToken
    function faucet(address to, uint256 amount) external {
        if (!faucetEnabled) revert FaucetDisabled();
        if (amount > faucetMax) revert FaucetAmountTooLarge(amount, faucetMax);
        _mint(to, amount);
        emit FaucetMinted(to, amount);
    }
}
