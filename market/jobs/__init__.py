"""Jobs: a routed request from hold to receipt, and the receipts providers sign."""
