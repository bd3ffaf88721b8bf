"""The double-entry ledger: buyers' escrow, holds, charges, provider earnings, protocol fees.

`service` holds the operations; `models` the tables; `schemas` what is shown outside.
"""
