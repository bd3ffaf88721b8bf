"""Merkle tree of an epoch's receipts, compatible with OpenZeppelin's `MerkleProof`.

Leaves are `keccak256(receipt_hash)` (the contract's `keccak256(abi.encode(receiptHash))`), pairs
are hashed sorted (`commutativeKeccak256`), and an odd node at the end of a level moves up
unchanged. A proof is the list of siblings from leaf to root; the contract's `verifyReceipt`
checks it against the root recorded for the epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_hash.auto import keccak

EMPTY_ROOT = bytes(32)


def leaf_of(receipt_hash: bytes) -> bytes:
    """The tree leaf of one receipt hash (32 bytes)."""
    if len(receipt_hash) != 32:
        raise ValueError(f"a receipt hash is 32 bytes, got {len(receipt_hash)}")
    return keccak(receipt_hash)


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


class MerkleTree:
    """All levels of the tree over `receipt_hashes`, in the order given."""

    def __init__(self, receipt_hashes: Sequence[bytes]) -> None:
        level = [leaf_of(h) for h in receipt_hashes]
        self.levels: list[list[bytes]] = [level]
        while len(level) > 1:
            level = [
                _pair(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                for i in range(0, len(level), 2)
            ]
            self.levels.append(level)

    @property
    def root(self) -> bytes:
        """The root (32 zero bytes for an empty tree)."""
        return self.levels[-1][0] if self.levels[0] else EMPTY_ROOT

    def proof(self, index: int) -> list[bytes]:
        """Siblings from the leaf at `index` up to the root."""
        if not 0 <= index < len(self.levels[0]):
            raise IndexError(f"leaf {index} is not in a tree of {len(self.levels[0])} leaves")
        siblings = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                siblings.append(level[sibling])
            index //= 2
        return siblings


def verify(root: bytes, receipt_hash: bytes, proof: Sequence[bytes]) -> bool:
    """Checks a proof off-chain exactly as the contract does."""
    node = leaf_of(receipt_hash)
    for sibling in proof:
        node = _pair(node, sibling)
    return node == root
