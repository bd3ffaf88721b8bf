// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {INetworkToken} from "./interfaces/INetworkToken.sol";

/// @title Network token: genesis supply at deployment, then rewards minted only by settlement
contract NetworkToken is ERC20, INetworkToken {
    /// @inheritdoc INetworkToken
    uint256 public immutable epochMintCap;
    /// @inheritdoc INetworkToken
    address public minter;
    /// @inheritdoc INetworkToken
    mapping(uint64 epoch => uint256 amount) public mintedInEpoch;

    address private immutable _deployer;

    /// @param genesisHolder receives `genesisSupply` (for the first providers' stake)
    /// @param genesisSupply base units minted at deployment
    /// @param epochMintCap_ the most the reward schedule may mint for one epoch
    constructor(address genesisHolder, uint256 genesisSupply, uint256 epochMintCap_)
        ERC20("Joule Network Token", "JOULE")
    {
        epochMintCap = epochMintCap_;
        _deployer = msg.sender;
        if (genesisSupply > 0) _mint(genesisHolder, genesisSupply);
    }

    /// @inheritdoc INetworkToken
    function bindMinter(address minter_) external {
        if (msg.sender != _deployer) revert NotMinter(msg.sender);
        if (minter != address(0)) revert MinterAlreadyBound(minter);
        if (minter_ == address(0)) revert ZeroMinter();
        minter = minter_;
        emit MinterBound(minter_);
    }

    /// @inheritdoc INetworkToken
    function mintReward(address to, uint256 amount, uint64 epoch) external {
        if (msg.sender != minter || minter == address(0)) revert NotMinter(msg.sender);
        uint256 already = mintedInEpoch[epoch];
        if (already + amount > epochMintCap) {
            revert EpochMintCapExceeded(epoch, already, amount, epochMintCap);
        }
        mintedInEpoch[epoch] = already + amount;
        _mint(to, amount);
        emit RewardMinted(epoch, to, amount);
    }

    /// @inheritdoc INetworkToken
    function burn(uint256 amount) external {
        _burn(msg.sender, amount);
    }
}
