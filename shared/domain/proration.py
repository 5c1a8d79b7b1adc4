"""Proration to the second: credit the unused part of the old fee, charge the remaining part of the new.

Contract:
- The remaining fraction is ``(period end - change instant) / period length`` in whole seconds, kept
  as an exact ``Fraction``; each line is ``fee x fraction`` rounded once (half away from zero).
- Because the rounding mode is symmetric, changing to an identical fee yields lines that cancel
  exactly, and any change is off from ``(new - old) x fraction`` by at most one minor unit per line.
- Lines are ``LineKind.PRORATION`` with ``proration=True`` and cover ``[at, period end)``.
  Zero-amount lines are left out (moving from a free plan gives only the charge).

Worked example (Stripe's documented one): USD 10 -> USD 20 exactly halfway through a period gives a
credit of -5.00 and a charge of +10.00, i.e. +5.00.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from shared.domain.calendar import Period, ensure_utc
from shared.domain.catalog import Plan
from shared.domain.errors import ProrationError
from shared.domain.invoice import InvoiceLine, LineKind
from shared.domain.money import Money


def _remaining(period: Period, at: datetime) -> tuple[datetime, Period]:
    instant = ensure_utc(at).replace(microsecond=0)
    if not period.start <= instant < period.end:
        raise ProrationError(f"cannot prorate at {instant.isoformat()}: outside the current period {period}")
    return instant, Period(instant, period.end)


def prorated(fee: Money, period: Period, at: datetime) -> Money:
    """``fee`` times the share of ``period`` remaining at ``at``, rounded once."""
    instant, _ = _remaining(period, at)
    return fee.scale(period.remaining_fraction(instant))


def proration_lines(
    *,
    old_fee: Money,
    new_fee: Money,
    period: Period,
    at: datetime,
    old_description: str,
    new_description: str,
    old_quantity: int = 1,
    new_quantity: int = 1,
) -> tuple[InvoiceLine, ...]:
    """The credit for the unused old fee and the charge for the remaining new fee (zero lines dropped)."""
    instant, remaining = _remaining(period, at)
    fraction = period.remaining_fraction(instant)
    credit = -old_fee.scale(fraction)
    charge = new_fee.scale(fraction)
    lines = []
    if not credit.is_zero():
        lines.append(
            InvoiceLine(
                kind=LineKind.PRORATION,
                description=old_description,
                amount=credit,
                quantity=Decimal(old_quantity),
                period=remaining,
                proration=True,
            )
        )
    if not charge.is_zero():
        lines.append(
            InvoiceLine(
                kind=LineKind.PRORATION,
                description=new_description,
                amount=charge,
                quantity=Decimal(new_quantity),
                period=remaining,
                proration=True,
            )
        )
    return tuple(lines)


def _seats_label(plan: Plan, seats: int) -> str:
    return f"{plan.name} x {seats} seat{'s' if seats != 1 else ''}" if plan.per_seat else plan.name


def prorate_plan_change(
    *, old_plan: Plan, new_plan: Plan, old_seats: int, new_seats: int, period: Period, at: datetime
) -> tuple[InvoiceLine, ...]:
    """Lines for switching plans at ``at`` within ``period`` (same interval and currency)."""
    if old_plan.interval != new_plan.interval:
        raise ProrationError("a change of interval re-anchors the subscription; use credit_unused_time")
    since = ensure_utc(at).date().isoformat()
    return proration_lines(
        old_fee=old_plan.fee(old_seats),
        new_fee=new_plan.fee(new_seats),
        period=period,
        at=at,
        old_description=f"Unused time on {_seats_label(old_plan, old_seats)} after {since}",
        new_description=f"Remaining time on {_seats_label(new_plan, new_seats)} from {since}",
        old_quantity=old_seats,
        new_quantity=new_seats,
    )


def prorate_seat_change(
    *, plan: Plan, old_seats: int, new_seats: int, period: Period, at: datetime
) -> tuple[InvoiceLine, ...]:
    """Lines for changing the seat count of ``plan`` at ``at``: credit old seats, charge new seats."""
    return prorate_plan_change(
        old_plan=plan, new_plan=plan, old_seats=old_seats, new_seats=new_seats, period=period, at=at
    )


def credit_unused_time(*, plan: Plan, seats: int, period: Period, at: datetime) -> tuple[InvoiceLine, ...]:
    """Only the credit for the unused part of ``plan`` (used when the subscription re-anchors)."""
    since = ensure_utc(at).date().isoformat()
    return proration_lines(
        old_fee=plan.fee(seats),
        new_fee=Money.zero(plan.currency),
        period=period,
        at=at,
        old_description=f"Unused time on {_seats_label(plan, seats)} after {since}",
        new_description="",
        old_quantity=seats,
    )


def charge_remaining_time(*, plan: Plan, seats: int, period: Period, at: datetime) -> tuple[InvoiceLine, ...]:
    """Only the charge for the rest of ``period`` (a first period that starts between two boundaries)."""
    since = ensure_utc(at).date().isoformat()
    return proration_lines(
        old_fee=Money.zero(plan.currency),
        new_fee=plan.fee(seats),
        period=period,
        at=at,
        old_description="",
        new_description=f"Remaining time on {_seats_label(plan, seats)} from {since}",
        new_quantity=seats,
    )
