"""Included credits: what a plan grants for a billing period, for a trial window, and after an upgrade.

Contract:
- A grant is a value (``IncludedCreditGrant``) the caller writes to the credit ledger; its ``key`` is
  unique per subscription, meter, effective instant and occasion, so a replayed command or period close
  produces the same key and the ledger refuses to grant twice.
- Period grants: each meter's included credit for the seats, effective at the period start, expiring at
  its end. Trial grants: the same amounts for the trial window. Change grants: the prorated increase of
  the included credit for the rest of the period, rounded once (see ``change_grants``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from shared.domain.calendar import Period, ensure_utc, iso_instant
from shared.domain.catalog import CreditAmount, IncludedCredit, MeterId, Plan
from shared.domain.errors import InvalidValueError
from shared.domain.ledger import CreditLedger, GrantSource, LedgerEntry
from shared.domain.money import Money, _round_fraction

PLAN_INCLUDED = "plan_included"
TRIAL = "trial"


@dataclass(frozen=True, slots=True)
class IncludedCreditGrant:
    """Credit to grant for (part of) a period.

    ``source`` is a ledger ``GrantSource`` value. ``occasion`` tells apart grants of one meter that take
    effect at the same instant: empty for a period's grant (the historical key), ``trial`` for a trial's,
    ``change:<plan>:<seats>`` for the top-up after a plan or seat change.
    """

    subscription_id: str
    meter_id: MeterId
    amount: CreditAmount
    effective_at: datetime
    expires_at: datetime
    source: str = PLAN_INCLUDED
    occasion: str = ""

    @property
    def key(self) -> str:
        base = f"{self.subscription_id}|{self.meter_id}|{iso_instant(self.effective_at)}"
        return f"{base}|{self.occasion}" if self.occasion else base

    def grant_into(self, ledger: CreditLedger) -> LedgerEntry:
        """Write this grant to the subscription's credit ledger, under its grant id (``incl|<key>``): the worker
        writing it for good and a preview applying it to its copy grant the same ids, so credits are drawn
        in the same order."""
        return ledger.grant(grant_id=f"incl|{self.key}", meter=self.meter_id, amount=self.amount,
                            source=GrantSource(self.source), effective_at=self.effective_at,
                            expires_at=self.expires_at)


def included_grants(subscription_id: str, plan: Plan, seats: int, period: Period) -> tuple[IncludedCreditGrant, ...]:
    """The plan-included credits for ``period``: effective at its start, expiring at its end."""
    grants = []
    for meter_id in sorted(plan.meters):
        included = plan.meters[meter_id].included
        if included is None:
            continue
        grants.append(
            IncludedCreditGrant(
                subscription_id=subscription_id,
                meter_id=meter_id,
                amount=included.for_seats(seats),
                effective_at=period.start,
                expires_at=period.end,
            )
        )
    return tuple(grants)


def trial_grants(subscription_id: str, plan: Plan, seats: int, trial: Period) -> tuple[IncludedCreditGrant, ...]:
    """The plan's included credits for the whole trial window, as ``trial`` grants expiring at its end.

    # NOTE: a trial gets the full included credits of one period, not a share prorated to the trial's
    # length: a Pro trial whose inference is blocked from the first request (or billed as overage) is no
    # trial. They are granted with source ``trial`` so they are consumed first and expire with the trial;
    # the first paid period then gets its own grants.
    """
    return tuple(
        IncludedCreditGrant(
            subscription_id=subscription_id,
            meter_id=grant.meter_id,
            amount=grant.amount,
            effective_at=grant.effective_at,
            expires_at=grant.expires_at,
            source=TRIAL,
            occasion=TRIAL,
        )
        for grant in included_grants(subscription_id, plan, seats, trial)
    )


def prorate_units(units: Decimal, fraction: Fraction) -> Decimal:
    """``units x fraction``, rounded once (half away from zero) to the precision ``units`` is written in
    (whole units for ``1000``, tenths for ``2.5``)."""
    if not units.is_finite():
        raise InvalidValueError(f"cannot prorate {units!r} units")
    written = units.as_tuple().exponent
    exponent = min(written, 0) if isinstance(written, int) else 0
    scaled = Fraction(units) * fraction * Fraction(10) ** -exponent
    return Decimal(_round_fraction(scaled)).scaleb(exponent)


def _increase(old: IncludedCredit | None, old_seats: int, new: IncludedCredit, new_seats: int) -> CreditAmount:
    """How much more the new included credit is than the old one (same kind), possibly negative."""
    gained = new.for_seats(new_seats)
    previous = old.for_seats(old_seats) if old is not None else None
    if isinstance(gained, Money):
        if isinstance(previous, Money) and previous.currency == gained.currency:
            return gained - previous
        return gained
    if isinstance(previous, Decimal):
        return gained - previous
    return gained


def change_grants(
    *,
    subscription_id: str,
    old_plan: Plan,
    old_seats: int,
    new_plan: Plan,
    new_seats: int,
    period: Period,
    at: datetime,
) -> tuple[IncludedCreditGrant, ...]:
    """The included credit an immediate plan or seat change adds for the rest of ``period``.

    # NOTE: per meter, (new plan's included credit - old plan's) x the share of the period remaining at
    # ``at`` (to the second, as proration), rounded once: money to the minor unit, units to the precision
    # the catalog writes them in. It is a ``plan_included`` grant effective at ``at`` and expiring with
    # the period, on top of the period's original grant (which keeps what is left of it). A decrease
    # (an immediate downgrade) takes nothing back: credit already granted stays until the period ends.
    # The next period is granted in full on the new plan by the period close.

    Worked example: Pro (USD 2 and 1,000 GB-months) -> Team with 3 seats (USD 6 and 3,000 GB-months)
    10 days into a 30-day period: 2/3 remains, so USD 4 x 2/3 = USD 2.67 and 2,000 x 2/3 = 1,333
    GB-months, both expiring at the period end.
    """
    instant = ensure_utc(at).replace(microsecond=0)
    fraction = period.remaining_fraction(instant)
    if fraction == 0:
        return ()
    occasion = f"change:{new_plan.id}:{new_seats}"
    grants = []
    for meter_id in sorted(new_plan.meters):
        included = new_plan.meters[meter_id].included
        if included is None:
            continue
        old_pricing = old_plan.pricing_for(meter_id)
        increase = _increase(old_pricing.included if old_pricing else None, old_seats, included, new_seats)
        amount: CreditAmount
        if isinstance(increase, Money):
            amount = increase.scale(fraction)
            if not amount.is_positive():
                continue
        else:
            amount = prorate_units(increase, fraction)
            if amount <= 0:
                continue
        grants.append(
            IncludedCreditGrant(
                subscription_id=subscription_id,
                meter_id=meter_id,
                amount=amount,
                effective_at=max(instant, period.start),
                expires_at=period.end,
                occasion=occasion,
            )
        )
    return tuple(grants)
