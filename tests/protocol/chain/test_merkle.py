"""The receipts tree matches OpenZeppelin's MerkleProof rules (checked on-chain elsewhere)."""

from __future__ import annotations

import pytest

from protocol.merkle import EMPTY_ROOT, MerkleTree, verify


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 100])
def test_every_leaf_proves_against_the_root(size: int) -> None:
    hashes = [i.to_bytes(32, "big") for i in range(1, size + 1)]
    tree = MerkleTree(hashes)
    for i, h in enumerate(hashes):
        assert verify(tree.root, h, tree.proof(i))
    assert not verify(tree.root, (size + 1).to_bytes(32, "big"), tree.proof(0))


def test_empty_tree_and_bad_input() -> None:
    assert MerkleTree([]).root == EMPTY_ROOT
    with pytest.raises(IndexError):
        MerkleTree([bytes(32)]).proof(1)
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleTree([b"short"])
