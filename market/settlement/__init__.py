"""Settlement: epochs of verified receipts, settled on-chain in one batch, with proofs."""
