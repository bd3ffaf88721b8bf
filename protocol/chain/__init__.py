"""Chain access: the only code in the project that imports web3.

Both the market (settlement, deposit watching) and the provider agent (binding its key,
staking, withdrawing earnings) use it, so it lives in the shared `protocol` package.
"""
