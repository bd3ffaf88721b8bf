"""Every ORM model of the market, imported so that `Base.metadata` is complete.

Alembic's env.py and the migration tests import this; add each new package's models here.
"""

import market.jobs.models
import market.providers.models
import market.reviews.models
import market.settlement.models
from market.buyers.models import ApiKey, Buyer
from market.buyers.nonces import UsedNonce
from market.db import Base
from market.jobs.models import RejectedReceipt
from market.ledger.models import Account, Hold, Posting, Transfer
from market.providers.models import AttestationCheck

__all__ = [
    "Account",
    "ApiKey",
    "AttestationCheck",
    "Base",
    "Buyer",
    "Hold",
    "Posting",
    "RejectedReceipt",
    "Transfer",
    "UsedNonce",
    "market",
]
