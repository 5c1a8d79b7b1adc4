"""Rating: turn a subscription, its plan and the period's usage into an invoice draft.

``close_period`` is what the billing worker calls when a period ends. It is a domain service: it reads
the plan and usage, consumes credits through the ``CreditSource`` port, advances the subscription
(recording its events) and returns a draft invoice plus everything the worker must persist in the same
transaction (credit consumptions, the next period's included-credit grants, the coupon redemption).

Invoice layout of a period close (each line rounded once, total = sum of lines):
- usage of the closed period, in arrears, per meter (sorted by meter id), followed by a CREDIT line
  for the money credits consumed against it;
- late usage of earlier periods as ADJUSTMENT lines (rated the same way, credits as of that period);
- proration lines accrued since the last invoice;
- the fee for the NEXT period, in advance (none when cancelling, paused, or trialing);
- one DISCOUNT line for the subscription's coupon, capped so the invoice never goes negative;
- one TAX line on the taxable lines.

``close_final_period`` is the same close cut short at an immediate cancellation (or dunning's give-up):
the same lines over ``[period start, cancel instant)``, without a fee (nothing is billed in advance).

# NOTE: meters whose overage policy is BLOCK (free tier compute, report quotas) are neither consumed nor
# billed here: their credits are consumed as usage is authorised at the edge, which is what makes the
# block possible. Rating only bills meters with overage BILL. Usage reported for a meter the plan does
# not price is returned in ``unbilled`` instead of failing the close.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache, partial
from typing import Protocol

from shared.domain.calendar import Period, ensure_utc, is_full_period, period_after, period_containing
from shared.domain.catalog import CreditAmount, MeterId, MeterPricing, OveragePolicy, Plan
from shared.domain.coupons import Coupon, CouponRedemption, apply_coupon
from shared.domain.errors import RatingError
from shared.domain.ids import InvoiceId, invoice_id_for
from shared.domain.included_credits import IncludedCreditGrant as IncludedCreditGrant
from shared.domain.included_credits import included_grants as included_grants
from shared.domain.included_credits import trial_grants
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, InvoiceStatus, LineKind
from shared.domain.money import Money, UnitPrice, line_amount, sum_money
from shared.domain.pricing import UsagePrice
from shared.domain.proration import charge_remaining_time
from shared.domain.subscription import CLOSABLE_STATUSES, Subscription, SubscriptionStatus

_LAST_SECOND = timedelta(seconds=1)


class ConsumedCredit(Protocol):
    """What a ``CreditSource`` reports back: how much of the request it covered."""

    @property
    def covered(self) -> CreditAmount: ...


class CreditSource(Protocol):
    """The port rating consumes credits through; ``shared.domain.ledger.CreditLedger`` implements it.

    ``consume`` draws up to ``amount`` of the credit usable for ``meter`` at instant ``at`` and reports
    ``covered``: the same kind as ``amount`` (``Money`` in the same currency for meters whose credits
    are money, ``Decimal`` meter units otherwise), never negative and never more than ``amount``.
    ``reference`` is unique per consumption (rating derives it from the invoice key and the meter), so
    a replayed period close cannot draw twice. The implementation records its own append-only entries.
    """

    def consume(self, meter: str, amount: CreditAmount, at: datetime, *, reference: str) -> ConsumedCredit: ...


@dataclass(frozen=True, slots=True)
class LateUsage:
    """Usage of an already closed period that arrived after its close."""

    meter_id: MeterId
    period: Period
    quantity: Decimal
    # What that period has already billed of the meter (all its units, and the included ones among them): a
    # tiered price bills the late units at their marginal position after these (pricing.UsagePrice.marginal).
    billed_quantity: Decimal = Decimal(0)
    billed_included: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class CreditConsumption:
    meter_id: MeterId
    amount: CreditAmount
    at: datetime


@dataclass(frozen=True, slots=True)
class UnbilledUsage:
    meter_id: MeterId
    period: Period
    quantity: Decimal
    reason: str


@dataclass(frozen=True, slots=True)
class RatingResult:
    """A draft invoice and what the worker must persist with it, in one transaction."""

    invoice: Invoice
    credits_consumed: tuple[CreditConsumption, ...]
    grants: tuple[IncludedCreditGrant, ...]
    coupon_redemption: CouponRedemption | None
    unbilled: tuple[UnbilledUsage, ...]


@dataclass(frozen=True, slots=True)
class PeriodCloseResult(RatingResult):
    closed_period: Period
    next_period: Period | None


# --- usage -----------------------------------------------------------------------------------------


# How a meter's unit reads on an invoice (the catalog's `unit`); unknown units are shown as they are.
_UNIT_WORDS = {"usd_micro": "micro-USD", "gb_month": "GB-months", "report": "reports", "request": "requests"}


def _readable_quantity(quantity: Decimal) -> str:
    q = quantity.normalize()
    if q == q.to_integral():
        return f"{int(q):,}"
    return f"{q.quantize(Decimal('0.01')) if abs(q) >= 1 else q:,f}"


def _usage_text(label: str, pricing: MeterPricing, quantity: Decimal) -> str:
    """E.g. "Inference compute: 1,603,716 micro-USD" (or "Usage: 12 inference" without catalog names)."""
    name = pricing.meter_name or str(pricing.meter_id)
    unit = _UNIT_WORDS.get(pricing.meter_unit or "", pricing.meter_unit or "")
    head = name if label == "Usage" else f"{label}: {name}"
    return f"{head}: {_readable_quantity(quantity)} {unit}".rstrip()


def _consume_money(credits: CreditSource, meter_id: MeterId, wanted: Money, at: datetime, reference: str) -> Money:
    got = credits.consume(meter_id, wanted, at, reference=reference).covered
    if not isinstance(got, Money) or got.currency != wanted.currency:
        raise RatingError(f"credit source returned {got!r} for money credits on meter {meter_id}")
    if not Money.zero(wanted.currency) <= got <= wanted:
        raise RatingError(f"credit source consumed {got} on meter {meter_id}, outside 0..{wanted}")
    return got


def _consume_units(credits: CreditSource, meter_id: MeterId, wanted: Decimal, at: datetime, reference: str) -> Decimal:
    got = credits.consume(meter_id, wanted, at, reference=reference).covered
    if not isinstance(got, Decimal):
        raise RatingError(f"credit source returned {got!r} for unit credits on meter {meter_id}")
    if not Decimal(0) <= got <= wanted:
        raise RatingError(f"credit source consumed {got} on meter {meter_id}, outside 0..{wanted}")
    return got


def _rate_quantity(
    pricing: MeterPricing, quantity: Decimal, consume: Callable[[CreditAmount], CreditAmount]
) -> tuple[UnitPrice, Money, Decimal, CreditAmount | None]:
    """The arithmetic of one billed meter, shared by the close and the preview.

    Returns the unit price, the usage line's amount, the billable quantity and the credit ``consume``
    covered (``None`` when nothing was asked). Credits in units reduce the quantity before pricing;
    credits in money are drawn against the rounded gross amount and go on their own CREDIT line.
    """
    unit_price = pricing.unit_price
    if unit_price is None:
        raise RatingError(f"meter {pricing.meter_id} is billed but has no unit price")
    if pricing.included is not None and pricing.included.units is not None:
        covered_units = consume(quantity)
        if not isinstance(covered_units, Decimal):
            raise RatingError(f"credit source returned {covered_units!r} for unit credits on {pricing.meter_id}")
        billable = quantity - covered_units
        return unit_price, line_amount(billable, unit_price), billable, covered_units
    gross = line_amount(quantity, unit_price)
    if not gross.is_positive():
        return unit_price, gross, quantity, None
    return unit_price, gross, quantity, consume(gross)


def _rate_meter(
    *,
    meter_id: MeterId,
    pricing: MeterPricing,
    quantity: Decimal,
    period: Period,
    credits: CreditSource,
    usage_kind: LineKind,
    label: str,
    reference: str,
    before: tuple[Decimal, Decimal] = (Decimal(0), Decimal(0)),
    minimum_share: Fraction = Fraction(1),
) -> tuple[list[InvoiceLine], CreditConsumption | None]:
    """Lines for one meter's billable usage after credits; the credit kind follows the plan's included
    credit (units when it is in units, money otherwise). ``before`` is what the period already billed
    (units, included units), for a pricing model's marginal price of late units."""
    usage_at = period.end - _LAST_SECOND

    def consume(wanted: CreditAmount) -> CreditAmount:
        if isinstance(wanted, Money):
            return _consume_money(credits, meter_id, wanted, usage_at, reference)
        return _consume_units(credits, meter_id, wanted, usage_at, reference)

    if pricing.price is not None:
        return _rate_priced_meter(meter_id=meter_id, pricing=pricing, price=pricing.price, quantity=quantity,
                                  before=before, period=period, consume=consume, usage_kind=usage_kind,
                                  label=label, usage_at=usage_at, minimum_share=minimum_share)
    unit_price, amount, billable, covered = _rate_quantity(pricing, quantity, consume)
    text = _usage_text(label, pricing, quantity)
    if isinstance(covered, Decimal):
        if covered:
            text += f", {_readable_quantity(covered)} covered by included credits"
        line = InvoiceLine(
            kind=usage_kind,
            description=text,
            amount=amount,
            quantity=billable,
            unit_price=unit_price,
            period=period,
            meter_id=meter_id,
        )
        return [line], (CreditConsumption(meter_id, covered, usage_at) if covered else None)
    lines = [
        InvoiceLine(
            kind=usage_kind,
            description=text,
            amount=amount,
            quantity=quantity,
            unit_price=unit_price,
            period=period,
            meter_id=meter_id,
        )
    ]
    if covered is None or covered.is_zero():
        return lines, None
    lines.append(
        InvoiceLine(
            kind=LineKind.CREDIT,
            description=f"Included credits applied to {pricing.meter_name or meter_id}",
            amount=-covered,
            period=period,
            meter_id=meter_id,
        )
    )
    return lines, CreditConsumption(meter_id, covered, usage_at)


def _rate_priced_meter(
    *,
    meter_id: MeterId,
    pricing: MeterPricing,
    price: UsagePrice,
    quantity: Decimal,
    before: tuple[Decimal, Decimal],
    period: Period,
    consume: Callable[[CreditAmount], CreditAmount],
    usage_kind: LineKind,
    label: str,
    usage_at: datetime,
    minimum_share: Fraction = Fraction(1),
) -> tuple[list[InvoiceLine], CreditConsumption | None]:
    """A meter with a pricing model (``shared.domain.pricing``): one line per priced part (a tier touched, its
    flat fee, the packages, the minimum top-up), each rounded once; Σ lines is the meter's charge.

    Included units are drawn first and are the period's first units (pricing's rule); money credits are drawn
    against the usage parts (not the minimum top-up) and go on a CREDIT line as for a per-unit meter. With
    ``before`` (late units of a period already billed) the parts are the marginal ones: the charge of the new
    state less the charge of the billed one, part by part.
    """
    billed, billed_included = before
    covered: CreditAmount | None = None
    included = billed_included
    if pricing.included is not None and pricing.included.units is not None:
        covered = consume(quantity)
        if not isinstance(covered, Decimal):
            raise RatingError(f"credit source returned {covered!r} for unit credits on {pricing.meter_id}")
        included += covered
    after = (billed + quantity, included)
    parts = (price.marginal(before, after, minimum_share) if billed or billed_included
             else price.charge(*after, minimum_share))
    name = pricing.meter_name or str(meter_id)
    lines = []
    for part in parts:
        if part.unit_price is not None or part.key == "packages":
            text = _usage_text(label, pricing, part.quantity) + (f", {part.label}" if part.label else "")
        else:
            text = f"{name if label == 'Usage' else f'{label}: {name}'}: {part.label}"
        lines.append(InvoiceLine(kind=usage_kind, description=text, amount=part.amount, quantity=part.quantity,
                                 unit_price=part.unit_price, period=period, meter_id=meter_id))
    if isinstance(covered, Decimal):
        if covered and not any(line.quantity for line in lines):
            # everything covered: a zero line still says so (and its quantity 0 is what the grace reads back)
            lines.insert(0, InvoiceLine(kind=usage_kind, description=_usage_text(label, pricing, Decimal(0)),
                                        amount=Money.zero(price.currency), quantity=Decimal(0),
                                        unit_price=None, period=period, meter_id=meter_id))
        if covered and lines:
            first = lines[0]
            lines[0] = InvoiceLine(kind=first.kind, description=f"{first.description} "
                                   f"({_readable_quantity(covered)} covered by included credits)",
                                   amount=first.amount, quantity=first.quantity, unit_price=first.unit_price,
                                   period=period, meter_id=meter_id)
        return lines, (CreditConsumption(meter_id, covered, usage_at) if covered else None)
    gross = sum_money((p.amount for p in parts if p.key != "minimum"), price.currency)
    if pricing.included is None or not gross.is_positive():
        return lines, None
    credit = consume(gross)
    if not isinstance(credit, Money) or credit.is_zero():
        return lines, None
    lines.append(InvoiceLine(kind=LineKind.CREDIT, description=f"Included credits applied to {name}",
                             amount=-credit, period=period, meter_id=meter_id))
    return lines, CreditConsumption(meter_id, credit, usage_at)


def _checked_quantity(meter_id: str, quantity: object) -> Decimal:
    if isinstance(quantity, float) or not isinstance(quantity, Decimal | int):
        raise TypeError(f"usage quantity for {meter_id} must be Decimal or int, got {type(quantity).__name__}")
    checked = Decimal(quantity)
    if checked < 0:
        raise RatingError(f"negative usage {checked} for meter {meter_id}")
    return checked


def _rate_usage(
    *,
    plan: Plan,
    usage: Sequence[tuple[MeterId, Period, Decimal]],
    credits: CreditSource,
    usage_kind: LineKind,
    label: str,
    reference_prefix: str,
    billed_before: Sequence[tuple[Decimal, Decimal]] = (),
    minimum_share: Fraction = Fraction(1),
) -> tuple[list[InvoiceLine], list[CreditConsumption], list[UnbilledUsage]]:
    """``billed_before`` (parallel to ``usage``, optional): what each item's period already billed of its
    meter, (units, included units), for late usage priced at its marginal tier position; ``minimum_share``:
    the share of a meter's minimum its period owes (a period cut short)."""
    lines: list[InvoiceLine] = []
    consumptions: list[CreditConsumption] = []
    unbilled: list[UnbilledUsage] = []
    period_texts: dict[datetime, str] = {}
    for index, (meter_id, period, raw_quantity) in enumerate(usage):
        quantity = _checked_quantity(meter_id, raw_quantity)
        if quantity == 0 and not _has_minimum(plan, meter_id):
            continue
        pricing = plan.pricing_for(meter_id)
        if pricing is None:
            unbilled.append(UnbilledUsage(meter_id, period, quantity, f"plan {plan.id} does not price it"))
            continue
        if pricing.overage is OveragePolicy.BLOCK:
            continue
        period_start_text = period_texts.get(period.start)
        if period_start_text is None:
            period_start_text = period_texts[period.start] = period.start.isoformat()
        meter_lines, consumption = _rate_meter(
            meter_id=meter_id,
            pricing=pricing,
            quantity=quantity,
            period=period,
            credits=credits,
            usage_kind=usage_kind,
            label=label,
            reference=f"{reference_prefix}|{usage_kind.value}|{index}|{meter_id}|{period_start_text}",
            before=billed_before[index] if index < len(billed_before) else (Decimal(0), Decimal(0)),
            minimum_share=minimum_share,
        )
        lines.extend(meter_lines)
        if consumption is not None:
            consumptions.append(consumption)
    return lines, consumptions, unbilled


def _minimum_share(subscription: Subscription, period: Period) -> Fraction:
    """The share of a period's minimum that ``period`` owes: 1 for a full anchored period, its length over
    the anchored period's for one cut short (a stub first period, a cancel-now), to the second."""
    if is_full_period(period, subscription.anchor, subscription.interval):
        return Fraction(1)
    anchored = period_containing(subscription.anchor, subscription.interval, period.start)
    return Fraction(min(period.duration_seconds(), anchored.duration_seconds()), anchored.duration_seconds())


def _has_minimum(plan: Plan, meter_id: str) -> bool:
    pricing = plan.pricing_for(meter_id)
    return pricing is not None and pricing.price is not None and pricing.price.minimum is not None


# --- preview ---------------------------------------------------------------------------------------


class MeterTreatment(StrEnum):
    BILL = "bill"  # billed in arrears beyond the credits
    BLOCK = "block"  # refused beyond the credits at the edge, never billed
    UNPRICED = "unpriced"  # the plan does not price this meter: the close reports it as unbilled


@dataclass(frozen=True, slots=True)
class UsageChargeEstimate:
    """What the close would bill for one meter, given its usage so far and the credit left.

    ``gross`` is quantity x unit price before any credit (``None`` for meters that are not billed);
    unit credits show in ``credit_units_applied`` and ``billable_quantity``, money credits in
    ``credit_applied``; ``charge`` is the meter's amount before coupon and tax.
    """

    meter_id: str
    quantity: Decimal
    treatment: MeterTreatment
    gross: Money | None
    credit_units_applied: Decimal
    credit_applied: Money | None
    billable_quantity: Decimal
    charge: Money


def _covered_by(balance: CreditAmount | None, wanted: CreditAmount) -> CreditAmount:
    """What a balance covers of ``wanted`` without drawing it: the ledger's rule, never below zero."""
    if isinstance(wanted, Money):
        if not isinstance(balance, Money) or balance.currency != wanted.currency:
            return Money.zero(wanted.currency)
        return Money(max(0, min(balance.amount_minor, wanted.amount_minor)), wanted.currency)
    if not isinstance(balance, Decimal):
        return Decimal(0)
    return max(Decimal(0), min(balance, wanted))


def preview_usage_charges(
    plan: Plan,
    usage_totals_by_meter: Mapping[str, Decimal],
    credit_balances: Mapping[str, CreditAmount],
) -> tuple[UsageChargeEstimate, ...]:
    """Rate usage so far the way ``close_period`` will, against ``credit_balances``, consuming nothing.

    One estimate per meter the plan prices or the usage names, sorted by meter id. ``credit_balances``
    holds the credit usable per meter (``Money`` for money meters, ``Decimal`` units otherwise); a
    missing or negative balance covers nothing. The arithmetic is the close's own (``_rate_quantity``).

    # NOTE: a preview, not a promise: coupons, tax, late-usage adjustments and the next period's fee
    # are applied by the close itself, and credits may be drawn by other usage before it runs.
    """
    zero = Money.zero(plan.currency)
    estimates = []
    for raw_meter_id in sorted(set(plan.meters) | set(usage_totals_by_meter)):
        meter_id = MeterId(raw_meter_id)
        quantity = _checked_quantity(meter_id, usage_totals_by_meter.get(meter_id, Decimal(0)))
        pricing = plan.pricing_for(meter_id)
        if pricing is None or pricing.overage is OveragePolicy.BLOCK:
            treatment = MeterTreatment.UNPRICED if pricing is None else MeterTreatment.BLOCK
            estimates.append(
                UsageChargeEstimate(meter_id, quantity, treatment, None, Decimal(0), None, Decimal(0), zero)
            )
            continue
        covering = partial(_covered_by, credit_balances.get(meter_id))
        if pricing.price is not None:
            estimates.append(_preview_priced(meter_id, pricing, pricing.price, quantity, covering))
            continue
        unit_price, amount, billable, covered = _rate_quantity(pricing, quantity, covering)
        if isinstance(covered, Decimal):
            gross = line_amount(quantity, unit_price)
            estimate = UsageChargeEstimate(
                meter_id, quantity, MeterTreatment.BILL, gross, covered, None, billable, amount
            )
        else:
            credit = covered if covered is not None else zero
            estimate = UsageChargeEstimate(
                meter_id, quantity, MeterTreatment.BILL, amount, Decimal(0), credit, billable, amount - credit
            )
        estimates.append(estimate)
    return tuple(estimates)


def _preview_priced(meter_id: str, pricing: MeterPricing, price: UsagePrice, quantity: Decimal,
                    covering: Callable[[CreditAmount], CreditAmount]) -> UsageChargeEstimate:
    """``preview_usage_charges`` for a meter with a pricing model: the close's rule (included units first,
    money credits against the usage parts, not the minimum)."""
    if pricing.included is not None and pricing.included.units is not None:
        covered = covering(quantity)
        units = covered if isinstance(covered, Decimal) else Decimal(0)
        charge = price.total(quantity, units)
        return UsageChargeEstimate(meter_id, quantity, MeterTreatment.BILL, price.total(quantity), units, None,
                                   quantity - units, charge)
    parts = price.charge(quantity)
    gross = sum_money((p.amount for p in parts), price.currency)
    usage_gross = sum_money((p.amount for p in parts if p.key != "minimum"), price.currency)
    credit = Money.zero(price.currency)
    if pricing.included is not None and usage_gross.is_positive():
        drawn = covering(usage_gross)
        credit = drawn if isinstance(drawn, Money) else credit
    return UsageChargeEstimate(meter_id, quantity, MeterTreatment.BILL, gross, Decimal(0), credit, quantity,
                               gross - credit)


# --- fees, grants, coupon, tax ---------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _unit_price_of(money: Money) -> UnitPrice:
    return UnitPrice.from_money(money)


def _fee_line(plan: Plan, seats: int, period: Period) -> InvoiceLine:
    seat_text = f" x {seats} seat{'s' if seats != 1 else ''}" if plan.per_seat else ""
    unit = plan.seat_price if plan.seat_price is not None and plan.price.is_zero() else None
    return InvoiceLine(
        kind=LineKind.FEE,
        description=f"{plan.name}{seat_text} ({period.start.date().isoformat()} - {period.end.date().isoformat()})",
        amount=plan.fee(seats),
        quantity=Decimal(seats) if plan.per_seat else Decimal(1),
        unit_price=_unit_price_of(unit) if unit is not None else None,
        period=period,
    )


def _discount(
    subscription: Subscription, coupon: Coupon | None, invoice: Invoice, invoice_key: str
) -> CouponRedemption | None:
    if coupon is None or subscription.coupon is None:
        if coupon is not None:
            raise RatingError(f"coupon {coupon.id} given but subscription {subscription.id} has none")
        return None
    if coupon.id != subscription.coupon.coupon_id:
        raise RatingError(f"coupon {coupon.id} given for subscription coupon {subscription.coupon.coupon_id}")
    currency = invoice.currency
    fees = sum_money((line.amount for line in invoice.lines_of(LineKind.FEE)), currency)
    usage = sum_money((line.amount for line in invoice.lines if line.meter_id is not None), currency)
    redemption = apply_coupon(
        coupon,
        subscription.coupon,
        invoice_key=invoice_key,
        fee_amount=fees,
        usage_amount=usage,
        invoice_subtotal=invoice.pre_tax_total,
    )
    if redemption is not None:
        invoice.add_line(
            InvoiceLine(kind=LineKind.DISCOUNT, description=f"Discount ({coupon.name})", amount=-redemption.amount)
        )
    return redemption


def _check_inputs(subscription: Subscription, plan: Plan, tax_rate_bps: int) -> None:
    if plan.id != subscription.plan_id:
        raise RatingError(f"subscription {subscription.id} is on plan {subscription.plan_id}, not {plan.id}")
    if isinstance(tax_rate_bps, bool) or not isinstance(tax_rate_bps, int):
        raise TypeError("tax_rate_bps must be an int")


def _rate_closed_usage(
    *,
    subscription: Subscription,
    plan: Plan,
    billed: Period,
    usage_totals_by_meter: Mapping[MeterId, Decimal],
    credits: CreditSource,
    at: datetime,
    invoice_id: InvoiceId,
    pending_proration_lines: Sequence[InvoiceLine],
    late_usage: Sequence[LateUsage],
) -> tuple[Invoice, tuple[CreditConsumption, ...], tuple[UnbilledUsage, ...]]:
    """The draft of a period close up to its fee: the usage of ``billed`` (credits drawn at its last
    second), late usage of earlier periods as adjustments, then the proration lines carried to it. Shared
    by the close at the period end and the final close of an immediate cancellation (one rating path)."""
    invoice = Invoice.draft(
        invoice_id=invoice_id,
        key=InvoiceKey(subscription.id, InvoiceReason.PERIOD_CLOSE, billed),
        customer_id=subscription.customer_id,
        currency=plan.currency,
        at=at,
    )
    invoice_key = str(invoice.key)
    # NOTE: a meter with a minimum per period is billed its minimum even when nothing was used (not while the
    # subscription is paused: it bills no fee either; nor for a trial window, which is free).
    minimums = subscription.status not in (SubscriptionStatus.PAUSED, SubscriptionStatus.TRIALING)
    totals = {**{m: Decimal(0) for m, p in plan.meters.items() if minimums and _has_minimum(plan, m)
                 and p.overage is OveragePolicy.BILL}, **usage_totals_by_meter}
    usage = [(meter_id, billed, totals[meter_id]) for meter_id in sorted(totals)]
    lines, consumptions, unbilled = _rate_usage(
        plan=plan,
        usage=usage,
        credits=credits,
        usage_kind=LineKind.USAGE,
        label="Usage",
        reference_prefix=invoice_key,
        # the share is only read by a price with a minimum: most closes have none to compute it for
        minimum_share=(_minimum_share(subscription, billed) if minimums and any(_has_minimum(plan, m) for m in totals)
                       else Fraction(1)),
    )
    late = [(item.meter_id, item.period, item.quantity) for item in late_usage]
    late_lines, late_consumptions, late_unbilled = _rate_usage(
        plan=plan,
        usage=late,
        credits=credits,
        usage_kind=LineKind.ADJUSTMENT,
        label="Late usage",
        reference_prefix=invoice_key,
        billed_before=[(item.billed_quantity, item.billed_included) for item in late_usage],
    )
    invoice.add_lines(lines)
    invoice.add_lines(late_lines)
    invoice.add_lines(pending_proration_lines)
    return invoice, tuple(consumptions + late_consumptions), tuple(unbilled + late_unbilled)


# --- entry points ----------------------------------------------------------------------------------


def close_period(
    *,
    subscription: Subscription,
    plan: Plan,
    usage_totals_by_meter: Mapping[MeterId, Decimal],
    credits: CreditSource,
    coupon: Coupon | None,
    tax_rate_bps: int,
    at: datetime,
    invoice_id: InvoiceId,
    next_plan: Plan | None = None,
    pending_proration_lines: Sequence[InvoiceLine] = (),
    late_usage: Sequence[LateUsage] = (),
) -> PeriodCloseResult:
    """Close ``subscription.current_period`` at ``at`` (>= its end) and draft its invoice.

    ``next_plan`` is required when a downgrade is pending (the next period's fee is on that plan).
    Mutates ``subscription`` (period advanced, coupon redemption counted, events recorded) and, through
    ``credits``, the credit ledger. The invoice key is (subscription, period_close, closed period), so
    a retried close produces the same key and the store's unique constraint rejects the duplicate.
    """
    instant = ensure_utc(at)
    _check_inputs(subscription, plan, tax_rate_bps)
    if subscription.status not in CLOSABLE_STATUSES:
        raise RatingError(f"cannot close a period of a {subscription.status.value} subscription")
    closed = subscription.current_period
    if instant < closed.end:
        raise RatingError(f"period {closed} is still running at {instant.isoformat()}")
    upcoming_plan = plan
    if subscription.pending_plan_id is not None:
        if next_plan is None or next_plan.id != subscription.pending_plan_id:
            raise RatingError(f"next_plan {subscription.pending_plan_id} is required to bill the next period")
        upcoming_plan = next_plan

    invoice, consumptions, unbilled = _rate_closed_usage(
        subscription=subscription,
        plan=plan,
        billed=closed,
        usage_totals_by_meter=usage_totals_by_meter,
        credits=credits,
        at=instant,
        invoice_id=invoice_id,
        pending_proration_lines=pending_proration_lines,
        late_usage=late_usage,
    )
    invoice_key = str(invoice.key)

    billable_next = subscription.is_billable
    next_seats = subscription.next_seats
    next_period = (
        None if subscription.cancel_at_period_end else period_after(closed, subscription.anchor, subscription.interval)
    )
    grants: tuple[IncludedCreditGrant, ...] = ()
    if billable_next and next_period is not None:
        invoice.add_line(_fee_line(upcoming_plan, next_seats, next_period))
        grants = included_grants(subscription.id, upcoming_plan, next_seats, next_period)

    redemption = _discount(subscription, coupon, invoice, invoice_key)
    invoice.apply_tax(tax_rate_bps)

    subscription.advance_period(at=instant)
    if redemption is not None:
        subscription.record_coupon_redemption(redemption, at=instant)
    return PeriodCloseResult(
        invoice=invoice,
        credits_consumed=consumptions,
        grants=grants,
        coupon_redemption=redemption,
        unbilled=unbilled,
        closed_period=closed,
        next_period=next_period if subscription.status is not SubscriptionStatus.CANCELLED else None,
    )


def start_invoice(
    *,
    subscription: Subscription,
    plan: Plan,
    coupon: Coupon | None,
    tax_rate_bps: int,
    at: datetime,
    invoice_id: InvoiceId,
    trial_lines: Sequence[InvoiceLine] = (),
) -> RatingResult:
    """The in-advance invoice for the first paid period (at subscribe without trial, or at trial end).

    A stub first period (starting between two anchored boundaries) is charged pro rata as a proration
    line; a full one is charged the plan fee. Also returns the period's included-credit grants.
    ``trial_lines``: the rated usage of the trial that just ended (``end_trial``), billed after the fee and
    before the coupon and tax, which apply to them as to any line of this invoice.
    """
    instant = ensure_utc(at)
    _check_inputs(subscription, plan, tax_rate_bps)
    if subscription.status not in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
        raise RatingError(f"no first-period invoice for a {subscription.status.value} subscription")
    period = subscription.current_period
    invoice = Invoice.draft(
        invoice_id=invoice_id,
        key=InvoiceKey(subscription.id, InvoiceReason.SUBSCRIPTION_START, period),
        customer_id=subscription.customer_id,
        currency=plan.currency,
        at=instant,
    )
    if is_full_period(period, subscription.anchor, subscription.interval):
        invoice.add_line(_fee_line(plan, subscription.seats, period))
    else:
        anchored = period_containing(subscription.anchor, subscription.interval, period.start)
        invoice.add_lines(charge_remaining_time(plan=plan, seats=subscription.seats, period=anchored, at=period.start))
    invoice.add_lines(trial_lines)
    redemption = _discount(subscription, coupon, invoice, str(invoice.key))
    invoice.apply_tax(tax_rate_bps)
    if redemption is not None:
        subscription.record_coupon_redemption(redemption, at=instant)
    return RatingResult(
        invoice=invoice,
        credits_consumed=(),
        grants=included_grants(subscription.id, plan, subscription.seats, period),
        coupon_redemption=redemption,
        unbilled=(),
    )


@dataclass(frozen=True, slots=True)
class TrialEnd:
    """What ending a trial bills: the trial window (closed: its usage is billed, the caller records it in
    the period history) and the invoice that carries its usage, or None when nothing is invoiced."""

    trial: Period
    result: RatingResult | None


def trial_window_at(subscription: Subscription, at: datetime) -> Period | None:
    """The window a trial ending at ``at`` closes: from its start to ``at`` (an early conversion) or to its
    end; None when it has no length (converted at the very instant it started)."""
    current = subscription.current_period
    end = min(ensure_utc(at).replace(microsecond=0), current.end)
    return Period(current.start, end) if end > current.start else None


def _trial_line(line: InvoiceLine) -> InvoiceLine:
    """A trial usage or credit line as the customer reads it on the invoice it lands on."""
    text = line.description.replace("Included credits", "Trial credits").replace("included credits", "trial credits")
    return replace(line, description=f"Trial: {text}" if line.kind is LineKind.USAGE else text)


def end_trial(
    *,
    subscription: Subscription,
    plan: Plan,
    usage_totals_by_meter: Mapping[MeterId, Decimal],
    credits: CreditSource,
    coupon: Coupon | None,
    tax_rate_bps: int,
    at: datetime,
    has_payment_method: bool,
    late_usage: Sequence[LateUsage] = (),
) -> TrialEnd:
    """End ``subscription``'s trial at ``at`` (``Subscription.end_trial``) and bill the trial window.

    The window ``trial_window_at(at)`` is closed like a period: its usage rated by ``_rate_closed_usage``
    (credits first, drawn at its last second, so the trial's own credits, which expire at its end, cover
    it; one rounding per line; no minimum: a trial is free), keyed (subscription, period_close, window) for
    the credit references. What it bills lands on the invoice issued at the trial end: the first paid
    period's start invoice (``start_invoice`` with ``trial_lines``) when the subscription goes on (active,
    or past due without a payment method), or a final invoice keyed (subscription, period_close, window)
    when it is cancelled at its trial end; that one is not issued when nothing is owed (no usage beyond
    the trial's credits). Coupon and tax follow the invoice the lines land on.

    # NOTE: before this, the trial's usage was never closed: the first paid close found it as late usage
    # of an earlier period and billed it in full as adjustments, after the trial's credits had expired.
    """
    instant = ensure_utc(at)
    _check_inputs(subscription, plan, tax_rate_bps)
    if subscription.status is not SubscriptionStatus.TRIALING:
        raise RatingError(f"no trial to end for a {subscription.status.value} subscription")
    trial = trial_window_at(subscription, instant)
    lines: tuple[InvoiceLine, ...] = ()
    consumptions: tuple[CreditConsumption, ...] = ()
    unbilled: tuple[UnbilledUsage, ...] = ()
    if trial is not None:
        draft, consumptions, unbilled = _rate_closed_usage(
            subscription=subscription, plan=plan, billed=trial, usage_totals_by_meter=usage_totals_by_meter,
            credits=credits, at=instant, invoice_id=invoice_id_for(InvoiceKey(subscription.id,
                                                                              InvoiceReason.PERIOD_CLOSE, trial)),
            pending_proration_lines=(), late_usage=late_usage)
        lines = tuple(_trial_line(line) for line in draft.lines)
    subscription.end_trial(at=instant, has_payment_method=has_payment_method, plan=plan)
    if subscription.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
        key = InvoiceKey(subscription.id, InvoiceReason.SUBSCRIPTION_START, subscription.current_period)
        started = start_invoice(subscription=subscription, plan=plan, coupon=coupon, tax_rate_bps=tax_rate_bps,
                                at=instant, invoice_id=invoice_id_for(key), trial_lines=lines)
        return TrialEnd(trial or subscription.current_period,
                        replace(started, credits_consumed=consumptions, unbilled=unbilled))
    if trial is None:  # cancelled at the instant it started: nothing was used
        return TrialEnd(subscription.current_period, None)
    key = InvoiceKey(subscription.id, InvoiceReason.PERIOD_CLOSE, trial)
    invoice = Invoice.draft(invoice_id=invoice_id_for(key), key=key, customer_id=subscription.customer_id,
                            currency=plan.currency, at=instant, lines=lines)
    if invoice.total.is_zero():
        # NOTE: a trial cancelled at its end whose usage its credits covered owes nothing: no 0.00 invoice
        # (the usage is still closed and the credits consumed).
        return TrialEnd(trial, None)
    redemption = _discount(subscription, coupon, invoice, str(key))
    invoice.apply_tax(tax_rate_bps)
    if redemption is not None:
        subscription.record_coupon_redemption(redemption, at=instant)
    return TrialEnd(trial, RatingResult(invoice=invoice, credits_consumed=consumptions, grants=(),
                                        coupon_redemption=redemption, unbilled=unbilled))


def trial_credit_grants(*, subscription: Subscription, plan: Plan) -> tuple[IncludedCreditGrant, ...]:
    """The included credits of a trialing subscription's trial window (none unless it is trialing).

    See ``included_credits.trial_grants`` for why a trial gets them in full.
    """
    _check_inputs(subscription, plan, 0)
    if subscription.status is not SubscriptionStatus.TRIALING:
        return ()
    return trial_grants(subscription.id, plan, subscription.seats, subscription.current_period)


def change_invoice(
    *,
    subscription: Subscription,
    lines: Sequence[InvoiceLine],
    invoice_period: Period,
    currency: str,
    tax_rate_bps: int,
    at: datetime,
    invoice_id: InvoiceId,
) -> Invoice:
    """The immediate invoice for a plan, seat or interval change (its proration and fee lines).

    # NOTE: coupons are not applied to proration: they discount the recurring fee of each period, and a
    # proration is a correction of a fee already discounted (or not) on its own invoice.
    """
    invoice = Invoice.draft(
        invoice_id=invoice_id,
        key=InvoiceKey(subscription.id, InvoiceReason.SUBSCRIPTION_CHANGE, invoice_period),
        customer_id=subscription.customer_id,
        currency=currency,
        at=at,
        lines=lines,
    )
    invoice.apply_tax(tax_rate_bps)
    return invoice


def close_final_period(
    *,
    subscription: Subscription,
    plan: Plan,
    usage_totals_by_meter: Mapping[MeterId, Decimal],
    credits: CreditSource,
    coupon: Coupon | None,
    tax_rate_bps: int,
    at: datetime,
    invoice_id: InvoiceId,
    pending_proration_lines: Sequence[InvoiceLine] = (),
    late_usage: Sequence[LateUsage] = (),
) -> PeriodCloseResult | None:
    """The final invoice of a subscription that ends now (an immediate cancellation, dunning's give-up):
    its current period closed early, at ``at``.

    Rated exactly as ``close_period`` rates (``_rate_closed_usage``, the coupon, one tax line) over the
    period cut short, ``[current_period.start, min(at, current_period.end))``, keyed (subscription,
    period_close, that period); the included credits drawn are what the ledger holds at its last second
    (the period's grants in full: a normal close does not prorate them either). Nothing is billed in
    advance: there is no next period and no grant. Returns ``None`` when there is nothing to invoice (no
    usage, late usage or carried lines) or the period has no length left (cancelled at its start).

    Records the coupon redemption; the caller cancels the subscription (``Subscription.cancel``) after.

    # NOTE: the unused part of the fee paid in advance for the current period is neither refunded nor
    # credited (policy ``none``, today's behaviour and Stripe's default without ``prorate``); a per-plan
    # policy (none / credit / refund) is a later part of issue 14.
    # NOTE: an immediate cancellation applied after the period end but before that period's close ran
    # bills the whole period here (without the next period's fee); usage after the period end is unbilled.
    """
    instant = ensure_utc(at)
    _check_inputs(subscription, plan, tax_rate_bps)
    if subscription.status not in CLOSABLE_STATUSES:
        raise RatingError(f"no final invoice for a {subscription.status.value} subscription")
    current = subscription.current_period
    end = min(instant, current.end)
    if end <= current.start:
        return None
    billed = Period(current.start, end)
    invoice, consumptions, unbilled = _rate_closed_usage(
        subscription=subscription,
        plan=plan,
        billed=billed,
        usage_totals_by_meter=usage_totals_by_meter,
        credits=credits,
        at=instant,
        invoice_id=invoice_id,
        pending_proration_lines=pending_proration_lines,
        late_usage=late_usage,
    )
    if not invoice.lines:
        return None
    redemption = _discount(subscription, coupon, invoice, str(invoice.key))
    invoice.apply_tax(tax_rate_bps)
    if redemption is not None:
        subscription.record_coupon_redemption(redemption, at=instant)
    return PeriodCloseResult(
        invoice=invoice,
        credits_consumed=consumptions,
        grants=(),
        coupon_redemption=redemption,
        unbilled=unbilled,
        closed_period=billed,
        next_period=None,
    )


# --- usage received during a draft's grace ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraceUsage:
    """Usage of a draft invoice's own period, per meter: what its close billed (``closed``) and what arrived
    since, timestamped inside the period, before the draft was finalised (``added``)."""

    closed: Mapping[MeterId, Decimal]
    added: Mapping[MeterId, Decimal]


@dataclass(frozen=True, slots=True)
class _Covered:
    covered: CreditAmount


@dataclass(frozen=True, slots=True)
class _AlreadyDrawn:
    """A credit source that reports what the close already drew for one meter as covered, and draws only
    the rest from ``credits``: the total covered is then what one draw of the whole quantity would be."""

    credits: CreditSource
    drawn: CreditAmount

    def consume(self, meter: str, amount: CreditAmount, at: datetime, *, reference: str) -> ConsumedCredit:
        if isinstance(amount, Money) and isinstance(self.drawn, Money):
            more = amount - self.drawn
            if not more.is_positive():
                return _Covered(amount.min(self.drawn))
            return _Covered(self.drawn + _consume_money(self.credits, MeterId(meter), more, at, reference))
        if isinstance(amount, Decimal) and isinstance(self.drawn, Decimal):
            if amount <= self.drawn:
                return _Covered(min(amount, self.drawn))
            return _Covered(self.drawn + _consume_units(self.credits, MeterId(meter), amount - self.drawn, at,
                                                        reference))
        raise RatingError(f"credit of meter {meter} drawn as {self.drawn!r}, asked {amount!r}")


def _drawn_by_close(pricing: MeterPricing | None, lines: Sequence[InvoiceLine], closed: Decimal,
                    currency: str) -> CreditAmount:
    """What the close drew from the included credits for one meter, read back from its lines: money credits
    are its CREDIT line; unit credits are the quantity it billed less the usage line's billable quantity."""
    if pricing is not None and pricing.included is not None and pricing.included.units is not None:
        usage = [line for line in lines if line.kind is LineKind.USAGE]
        # NOTE: a pricing model writes one usage line per part; their quantities sum to the billable units
        # (flat fees and the minimum price no units: quantity 0).
        return closed - sum((line.quantity for line in usage), Decimal(0)) if usage else Decimal(0)
    return -sum_money((line.amount for line in lines if line.kind is LineKind.CREDIT), currency)


def rate_grace_usage(
    *,
    draft: Invoice,
    subscription: Subscription,
    plan: Plan,
    usage: GraceUsage,
    credits: CreditSource,
    coupon: Coupon | None,
) -> RatingResult:
    """The draft of a period close re-rated with the usage of its period that arrived during its grace.

    Each meter that received usage gets its usage (and CREDIT) line rated again over the whole quantity
    (``closed + added``): one rounding, the same unit price, and the included credits the close drew
    counted as drawn so only the difference is drawn now (at the period's last second, as the close drew),
    so the line is exactly what the close would have written had the usage arrived before the period end.
    Other lines (late usage of earlier periods, proration, the next period's fee) are kept; the coupon's
    discount and the tax line are computed again over the new lines. Returns a new draft with the same
    identity (``draft`` is left as it was), or ``draft`` itself when nothing arrived.

    ``plan`` is the plan of the closed period (the invoice's plan). Records the coupon redemption on
    ``subscription`` (a no-op when the close already recorded one for this invoice).
    """
    if draft.status is not InvoiceStatus.DRAFT:
        raise RatingError(f"invoice {draft.id} is {draft.status.value}: only a draft takes more usage")
    added = {meter: _checked_quantity(meter, quantity) for meter, quantity in usage.added.items()}
    if not any(added.values()):
        return RatingResult(invoice=draft, credits_consumed=(), grants=(), coupon_redemption=None, unbilled=())
    period, key = draft.period, str(draft.key)
    own = [i for i, line in enumerate(draft.lines)
           if line.period == period and line.meter_id is not None and line.kind in (LineKind.USAGE, LineKind.CREDIT)]
    own_of: dict[str, list[InvoiceLine]] = {}
    for i in own:
        own_of.setdefault(str(draft.lines[i].meter_id), []).append(draft.lines[i])
    kept = [line for i, line in enumerate(draft.lines)
            if i not in set(own) and line.kind not in (LineKind.DISCOUNT, LineKind.TAX)]
    lines: list[InvoiceLine] = []
    consumptions: list[CreditConsumption] = []
    unbilled: list[UnbilledUsage] = []
    for meter in sorted(set(own_of) | {m for m, q in added.items() if q}):
        meter_id = MeterId(meter)
        more = added.get(meter_id, Decimal(0))
        if not more:
            lines.extend(own_of[meter])
            continue
        closed = usage.closed.get(meter_id, Decimal(0))
        drawn = _drawn_by_close(plan.pricing_for(meter_id), own_of.get(meter, []), closed, draft.currency)
        meter_lines, meter_consumptions, meter_unbilled = _rate_usage(
            plan=plan,
            usage=[(meter_id, period, closed + more)],
            credits=_AlreadyDrawn(credits, drawn),
            usage_kind=LineKind.USAGE,
            label="Usage",
            # NOTE: "<invoice key>|usage|..." like the close's own references (the store reads the invoice of a
            # consumption from that prefix), with "grace" where the close has its index: never one of the close's.
            reference_prefix=f"{key}|usage|grace",
            minimum_share=_minimum_share(subscription, period),
        )
        lines.extend(meter_lines)
        consumptions.extend(meter_consumptions)
        unbilled.extend(meter_unbilled)
    invoice = Invoice.draft(
        invoice_id=draft.id,
        key=draft.key,
        customer_id=draft.customer_id,
        currency=draft.currency,
        at=draft.created_at,
        lines=[*lines, *kept],
    )
    applied = subscription.coupon
    old_discount = draft.lines_of(LineKind.DISCOUNT)
    redemption: CouponRedemption | None = None
    if coupon is not None and applied is not None and applied.coupon_id == coupon.id and (
        key in applied.invoice_keys or not old_discount
    ):
        redemption = _discount(subscription, coupon, invoice, key)
    else:
        invoice.add_lines(old_discount)  # the coupon is no longer the subscription's: the close's discount stands
    invoice.apply_tax(draft.tax_rate_bps)
    if redemption is not None:
        subscription.record_coupon_redemption(redemption, at=draft.created_at)
    return RatingResult(
        invoice=invoice,
        credits_consumed=tuple(consumptions),
        grants=(),
        coupon_redemption=redemption,
        unbilled=tuple(unbilled),
    )
