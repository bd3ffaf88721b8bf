"""The market's view of the chain: its deployment, operator key, and the deposit watcher."""
