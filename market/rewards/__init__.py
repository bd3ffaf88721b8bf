"""Network-token rewards per epoch: verified output tokens weighted by measured efficiency."""
