"""The spend rule of the usage tiers: included credits in money, pay-as-you-go, a spending cap.

Pure (the edge's ``services.ingest.service_layer.spend`` applies it inside one conditional write; the report-credit
rule of the other quota plans is ``shared.domain.quota``).

Contract:
- Priced usage of one meter (compute: ``inference``, whose quantity is USD micros) first consumes the
  period's included credits (money). Beyond them a ``block`` meter (the free tier) is refused; a ``bill``
  meter continues pay as you go, billed in arrears by the worker, up to the org's spending cap if it set
  one. ``spend`` is what the customer pays: the priced usage beyond the credits; the cap bounds it.
- Limits are turned into the largest *quantity* whose exact price (no rounding) stays within them, so
  every admission is an integer comparison that a SQL CHECK can repeat: ``used + requested <= limit``.
- A request is admitted only if it fits entirely: an event or authorisation that would cross the limit is
  refused even when some credit remains, so a blocked meter is never billed and a cap never exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import StrEnum

from shared.domain.catalog import MeterPricing, OveragePolicy
from shared.domain.money import Money, UnitPrice, line_amount
from shared.domain.quantity import number_of


class SpendDenialReason(StrEnum):
    """Why priced usage was refused; the edge puts it in the 402 body and in per-event results."""

    INCLUDED_CREDITS_EXHAUSTED = "included_credits_exhausted"  # block tier: credits used up
    SPEND_CAP_REACHED = "spend_cap_reached"  # pay-as-you-go tier: the org's cap reached


@dataclass(frozen=True, slots=True)
class SpendLimits:
    """What an org may spend on one meter in one billing period."""

    meter_id: str
    unit_price: UnitPrice
    included: Money
    overage: OveragePolicy
    cap: Money | None = None

    def __post_init__(self) -> None:
        if self.included.currency != self.unit_price.currency:
            raise ValueError("included credits and unit price must share a currency")
        if self.cap is not None and self.cap.currency != self.unit_price.currency:
            raise ValueError(f"the cap must be in {self.unit_price.currency}")
        if self.unit_price.amount <= 0:
            raise ValueError("a spend-limited meter needs a positive unit price")

    @classmethod
    def of(cls, pricing: MeterPricing, currency: str, *, seats: int, other_credit_minor: int = 0,
           cap_minor: int | None = None, cap_currency: str | None = None) -> SpendLimits:
        """The limits of a subscription on ``pricing`` (a meter priced per unit) in a period.

        Included = the plan's included credit for ``seats`` (pooled when per seat) plus money left on the
        subscription's other grants. # NOTE: a cap set in another currency than the plan's is ignored (the
        edge refuses to set one; a plan change to another currency leaves the org uncapped, not blocked).
        """
        if pricing.unit_price is None:
            raise ValueError(f"{pricing.meter_id} has no unit price: spend is not limited by quantity")
        included = Money.zero(currency)
        if pricing.included is not None and pricing.included.amount is not None:
            credit = pricing.included.for_seats(seats)
            included = credit if isinstance(credit, Money) else included
        included = included + Money(other_credit_minor, currency)
        cap = Money(cap_minor, currency) if cap_minor is not None and cap_currency == currency else None
        return cls(pricing.meter_id, pricing.unit_price, included, pricing.overage, cap)

    @property
    def limited(self) -> bool:
        return self.overage is OveragePolicy.BLOCK or self.cap is not None

    @property
    def refusal(self) -> SpendDenialReason:
        if self.overage is OveragePolicy.BLOCK:
            return SpendDenialReason.INCLUDED_CREDITS_EXHAUSTED
        return SpendDenialReason.SPEND_CAP_REACHED

    def quantity_limit(self) -> int | None:
        """The largest quantity of the period whose price stays within the limits; None: unlimited.

        Block: the included credits. Bill with a cap: credits plus cap. Bill without a cap: no limit.
        """
        if self.overage is OveragePolicy.BLOCK:
            budget = self.included
        elif self.cap is None:
            return None
        else:
            budget = self.included + self.cap
        if budget.amount_minor <= 0:
            return 0
        return int((budget.to_decimal() / self.unit_price.amount).to_integral_value(rounding=ROUND_FLOOR))


@dataclass(frozen=True, slots=True)
class SpendUsage:
    """The period's usage of one meter as the edge can see it.

    ``materialised``: what the worker has aggregated (every path, authorisations included once their usage
    event arrived); ``reserved``: what the edge authorised; ``reserved_materialised``: the part of
    ``reserved`` already inside ``materialised``; ``other_credit_minor``: money left on grants that are not
    the plan's included credit (promotional, refunds, paid top-ups).

    # NOTE: visible spend = materialised - reserved_materialised + reserved: each authorisation counted
    # once, whether the worker has seen its usage event yet or not.
    """

    materialised: Decimal
    reserved: int
    reserved_materialised: int
    other_credit_minor: int

    @property
    def observed(self) -> int:
        """Usage that did not come through an authorisation (Kafka path), rounded up to whole units."""
        return max(0, int(self.materialised.to_integral_value(rounding=ROUND_CEILING)) - self.reserved_materialised)

    @property
    def visible(self) -> int:
        return self.observed + self.reserved


@dataclass(frozen=True, slots=True)
class SpendDecision:
    allowed: bool
    reason: SpendDenialReason | None
    limit_quantity: int | None
    used_quantity: int  # visible usage of the period after the decision (unchanged when refused)

    @property
    def remaining_quantity(self) -> int | None:
        return None if self.limit_quantity is None else max(0, self.limit_quantity - self.used_quantity)


def decide_spend(limits: SpendLimits, used_quantity: int, requested_quantity: int) -> SpendDecision:
    """May ``requested_quantity`` more be used when ``used_quantity`` of the period is already used?"""
    if requested_quantity <= 0:
        raise ValueError("the requested quantity must be positive")
    used = max(0, used_quantity)
    limit = limits.quantity_limit()
    if limit is not None and used + requested_quantity > limit:
        return SpendDecision(False, limits.refusal, limit, used)
    return SpendDecision(True, None, limit, used + requested_quantity)


@dataclass(frozen=True, slots=True)
class SpendSummary:
    """The period's spend in money (rounded once, as the invoice line would be)."""

    usage_cost: Money  # all priced usage so far
    included: Money
    included_remaining: Money
    spend: Money  # pay as you go: priced usage beyond the credits
    cap: Money | None
    cap_remaining: Money | None
    limit_quantity: int | None
    remaining_quantity: int | None
    blocked: bool  # the limit is reached: nothing more is admitted
    reason: SpendDenialReason | None  # why, when blocked


def summarise_spend(limits: SpendLimits, used_quantity: int) -> SpendSummary:
    """Credits left, spend so far and the cap left after ``used_quantity`` of the period."""
    currency = limits.unit_price.currency
    cost = line_amount(max(0, used_quantity), limits.unit_price)
    zero = Money.zero(currency)
    included_remaining = (limits.included - cost).max(zero)
    billable = limits.overage is OveragePolicy.BILL
    spend = (cost - limits.included).max(zero) if billable else zero
    cap_remaining = (limits.cap - spend).max(zero) if limits.cap is not None and billable else None
    limit = limits.quantity_limit()
    remaining = None if limit is None else max(0, limit - used_quantity)
    return SpendSummary(usage_cost=cost, included=limits.included, included_remaining=included_remaining,
                        spend=spend, cap=limits.cap, cap_remaining=cap_remaining, limit_quantity=limit,
                        remaining_quantity=remaining, blocked=remaining == 0,
                        reason=limits.refusal if remaining == 0 else None)


def quantity_of(value: object) -> int | None:
    """A meter value as a whole quantity (rounded up: a fraction of a micro-dollar is never free)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = number_of(value)
    if number is None or not number.is_finite():
        return None
    return int(number.to_integral_value(rounding=ROUND_CEILING))
