"""Per-API-key budgets: money, wall energy and carbon, checked at routing, counted at charge.

Units are integers (never floats): money in payment-token base units, wall energy in
milli-watt-hours (mWh; 1 kWh = 1_000_000 mWh) and carbon in milligrams of CO2 (mg; 1 g =
1000 mg). A budget of None is no limit.

Rules, at routing time (`check`), for the offer about to be tried:

- money: refused when spent + the holds of the key's requests in flight + this request's
  worst-case hold would exceed the budget;
- energy / carbon: refused when the spent total already reached the budget, or when the
  worst-case estimate on this offer (the request's completion limit x the offer's published
  GPU J per output token, through the offer's site: host overhead, PUE, grid intensity) would
  take it over the budget;
- an offer whose figure cannot be estimated (no published J/token, or no grid intensity for
  a carbon budget) is routed out for a key with that budget (`Unestimable`): such a key is
  only served by measured offers. A key without energy and carbon budgets is unaffected.

At charge time (`record_spend`, in the transaction that settles the receipt) the charge is
added to the money spent, and the receipt's wall kWh and gCO2 (rounded up to the next mWh
and mg) to the energy and carbon spent. An unmeasured receipt adds its charge but no energy
or carbon: energy budgets can only count what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from market.buyers.models import ApiKey
from market.energy.accounting import EnergyChain, SiteProfile, energy_chain
from market.errors import MarketError
from market.jobs.models import Job, JobStatus
from market.prepared import Prepared

_KEYS = cast(Table, ApiKey.__table__)
_LOCK_SPENT = Prepared(
    select(_KEYS.c.spent_money, _KEYS.c.spent_wall_mwh, _KEYS.c.spent_gco2_mg)
    .where(_KEYS.c.id == bindparam("key_id"))
    .with_for_update(key_share=True)  # FOR NO KEY UPDATE: see `lock_key`
)
_SET_SPENT = Prepared(
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("key_id"))
    .values(
        spent_money=bindparam("new_money"),
        spent_wall_mwh=bindparam("new_wall_mwh"),
        spent_gco2_mg=bindparam("new_gco2_mg"),
    )
)

MWH_PER_KWH = Decimal(1_000_000)
MG_PER_G = Decimal(1000)


class BudgetExceededError(MarketError):
    """The request would take (or the key already took) one of its budgets over the limit."""

    status_code = 402
    code = "budget_exceeded"


@dataclass(frozen=True)
class Estimate:
    """The worst-case wall energy and carbon of a request on one offer (None: unknown)."""

    wall_mwh: int | None
    gco2_mg: int | None


@dataclass(frozen=True)
class Unestimable:
    """The offer cannot be estimated for one of the key's budgets: route it out."""

    budget: str


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def wall_mwh(chain: EnergyChain) -> int:
    """A chain's wall energy in mWh, rounded up (0 when unmeasured)."""
    return 0 if chain.wall_kwh is None else _ceil(chain.wall_kwh * MWH_PER_KWH)


def gco2_mg(chain: EnergyChain) -> int:
    """A chain's carbon in mg of CO2, rounded up (0 when unmeasured or no grid intensity)."""
    return 0 if chain.gco2 is None else _ceil(chain.gco2 * MG_PER_G)


def estimate(completion_limit: int, joules_per_token: float | None, site: SiteProfile) -> Estimate:
    """The worst case of a request: `completion_limit` x the offer's GPU J/token at its site."""
    if joules_per_token is None:
        return Estimate(None, None)
    joules = Decimal(repr(joules_per_token)) * completion_limit
    chain = energy_chain("estimated", _ceil(joules * 1000), site)
    return Estimate(
        None if chain.wall_kwh is None else wall_mwh(chain),
        None if chain.gco2 is None else gco2_mg(chain),
    )


def has_energy_budget(key: ApiKey) -> bool:
    """Whether the key limits energy or carbon (so only measured offers can serve it)."""
    return key.budget_wall_mwh is not None or key.budget_gco2_mg is not None


def _refuse(what: str, unit: str, spent: int, limit: int, detail: str = "") -> BudgetExceededError:
    return BudgetExceededError(
        f"This API key's {what} budget is exceeded: {spent} {unit} spent of a {limit} {unit} "
        f"limit{detail}. Raise the budget (PATCH /buyers/{{address}}/api-keys/{{id}}) or "
        "lower max_tokens."
    )


def check(key: ApiKey, in_flight: int, hold: int, worst: Estimate) -> Unestimable | None:
    """Raises `BudgetExceededError` if this request may not go to the offer; `Unestimable`
    if the offer must be skipped for the key's energy or carbon budget; else None.

    `in_flight`: the holds of the key's other requests not yet settled; `hold`: this
    request's worst-case hold on the offer; `worst`: its worst-case energy there.
    """
    energy = ("energy", "mWh", key.spent_wall_mwh, key.budget_wall_mwh, worst.wall_mwh)
    carbon = ("carbon", "mg CO2", key.spent_gco2_mg, key.budget_gco2_mg, worst.gco2_mg)
    for what, unit, spent, limit, _ in (energy, carbon):
        if limit is not None and spent >= limit:
            raise _refuse(what, unit, spent, limit)
    if key.budget_money is not None:
        limit = key.budget_money
        if key.spent_money + in_flight + hold > limit:
            pending = f" and {in_flight} held by requests in flight" if in_flight else ""
            detail = f"{pending}; this request may cost up to {hold}"
            raise _refuse("money", "base units", key.spent_money, limit, detail)
    for what, unit, spent, limit, worst_case in (energy, carbon):
        if limit is None:
            continue
        if worst_case is None:
            return Unestimable(what)
        if spent + worst_case > limit:
            detail = f"; this request may use up to {worst_case} {unit} on this offer"
            raise _refuse(what, unit, spent, limit, detail)
    return None


def lock_key(session: Session, key_id: int) -> ApiKey:
    """The key, locked for update (PostgreSQL) with its totals as they are now.

    `FOR NO KEY UPDATE`, the lock an UPDATE of other columns takes: it does not wait for
    the `FOR KEY SHARE` lock a request's job insert takes on the key (its foreign key),
    which another request may hold while it waits for the buyer's ledger accounts. A
    transaction that charges takes the key before the accounts, as one that opens does."""
    stmt = (
        select(ApiKey)
        .where(ApiKey.id == key_id)
        .with_for_update(of=ApiKey, key_share=True)
        .execution_options(populate_existing=True)
    )
    return session.scalars(stmt).one()


def in_flight_holds(session: Session, key_id: int) -> int:
    """The holds of the key's requests routed and not yet settled or released."""
    stmt = select(Job.hold_amount).where(Job.api_key_id == key_id, Job.status == JobStatus.ROUTED)
    return sum(session.scalars(stmt))


def record_spend(session: Session, key_id: int, charge: int, chain: EnergyChain) -> None:
    """Adds a charged receipt to the key's totals (in the charging transaction): the key's
    row is locked and read, then written (two Core statements; the money total is a decimal
    string on SQLite, so it cannot be added to in SQL)."""
    session.flush()
    money, mwh, mg = _LOCK_SPENT(session, {"key_id": key_id}).one()
    params = {
        "key_id": key_id,
        "new_money": money + charge,
        "new_wall_mwh": mwh + wall_mwh(chain),
        "new_gco2_mg": mg + gco2_mg(chain),
    }
    _SET_SPENT(session, params)
    identity = session.identity_map.get(session.identity_key(ApiKey, key_id))
    if identity is not None:
        session.expire(identity)
