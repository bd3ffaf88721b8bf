// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @dev Builds receipt trees the way protocol/merkle.py does and Settlement.verifyReceipt checks
///      them: leaf = keccak256(abi.encode(receiptHash)), pairs hashed sorted (OpenZeppelin's
///      commutative keccak), an odd node at the end of a level moves up unchanged.
library MerkleBuilder {
    function leafOf(bytes32 receiptHash) internal pure returns (bytes32) {
        return keccak256(abi.encode(receiptHash));
    }

    function hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encodePacked(a, b)) : keccak256(abi.encodePacked(b, a));
    }

    function _leaves(bytes32[] memory receipts) private pure returns (bytes32[] memory level) {
        level = new bytes32[](receipts.length);
        for (uint256 i; i < receipts.length; ++i) {
            level[i] = leafOf(receipts[i]);
        }
    }

    function _up(bytes32[] memory level) private pure returns (bytes32[] memory next) {
        next = new bytes32[]((level.length + 1) / 2);
        for (uint256 i; i < level.length; i += 2) {
            next[i / 2] = i + 1 < level.length ? hashPair(level[i], level[i + 1]) : level[i];
        }
    }

    /// @dev The root over `receipts` (zero for none).
    function root(bytes32[] memory receipts) internal pure returns (bytes32) {
        if (receipts.length == 0) return bytes32(0);
        bytes32[] memory level = _leaves(receipts);
        while (level.length > 1) {
            level = _up(level);
        }
        return level[0];
    }

    /// @dev The siblings from leaf `index` up to the root.
    function proof(bytes32[] memory receipts, uint256 index) internal pure returns (bytes32[] memory siblings) {
        require(index < receipts.length, "MerkleBuilder: index out of range");
        bytes32[] memory buffer = new bytes32[](256);
        uint256 count;
        bytes32[] memory level = _leaves(receipts);
        while (level.length > 1) {
            uint256 sibling = index ^ 1;
            if (sibling < level.length) buffer[count++] = level[sibling];
            level = _up(level);
            index /= 2;
        }
        siblings = new bytes32[](count);
        for (uint256 i; i < count; ++i) {
            siblings[i] = buffer[i];
        }
    }
}
