"""Closing a period (the billing run): rate usage against included credits and prices, apply coupons and
carried proration, issue the invoice, advance the period. A run of thousands of closes is one unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from services.billing_worker.service_layer.errors import Ignored, Refused
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.handlers.credit_notes import credit_unused_fee
from services.billing_worker.service_layer.handlers.credit_purchases import recharge_after_close
from services.billing_worker.service_layer.model import SubscriptionState
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import ClosePeriod
from shared.domain.calendar import Period, ensure_utc
from shared.domain.catalog import MeterId, Plan
from shared.domain.errors import DomainError
from shared.domain.ids import invoice_id_for
from shared.domain.invoice import InvoiceKey, InvoiceReason
from shared.domain.invoice_grace import finalizes_at
from shared.domain.late_usage import group_late_usage, late_usage_as_rated
from shared.domain.rating import LateUsage, close_final_period
from shared.domain.rating import close_period as rate_closed_period
from shared.domain.subscription import CLOSABLE_STATUSES, Subscription


def period_row(sub: Subscription) -> dict[str, Any]:
    """The subscription's current period, as recorded in its period history."""
    return {"subscription_id": sub.id, "period_start": sub.current_period.start,
            "period_end": sub.current_period.end, "plan_id": sub.plan_id, "seats": sub.seats}


def closable(uow: BillingUnitOfWork, p: ClosePeriod, now: datetime) -> None:
    """Raise Ignored or Refused when this close does not apply (changes nothing)."""
    sub = uow.subscription(p.subscription_id).subscription
    period_end = ensure_utc(p.period_end)
    if sub.status not in CLOSABLE_STATUSES:
        raise Ignored(f"a {sub.status.value} subscription has no period to close")
    if sub.current_period.end != period_end:
        raise Ignored(f"period ending {period_end.isoformat()} is not the current one "
                      f"(ends {sub.current_period.end.isoformat()})")
    if now < period_end:
        raise Refused("not_due", f"period ends {period_end.isoformat()}, the billing clock says {now.isoformat()}")


def prefetch_closes(uow: BillingUnitOfWork, messages: Sequence[tuple[Envelope, Any]], now: datetime) -> None:
    """The ledgers of the run's subscriptions, and the usage of every applicable close, in a few set-based
    reads (a billing run closes tens of thousands of periods at once)."""
    uow.load_ledgers(list(uow.states.values()), unsettled_only=True)  # a close never reverses a draw
    wanted: dict[str, tuple[str, datetime, datetime]] = {}
    for _, p in messages:
        if p.subscription_id in wanted:
            continue
        try:
            closable(uow, p, now)
        except (Ignored, DomainError):
            continue
        period = uow.states[p.subscription_id].subscription.current_period
        wanted[p.subscription_id] = (p.subscription_id, period.start, period.end)
    if wanted:
        uow.usage_closes.update(uow.close_usages(list(wanted.values())))


def close_period(uow: BillingUnitOfWork, env: Envelope, p: ClosePeriod, now: datetime) -> dict[str, Any]:
    closable(uow, p, now)
    state = uow.subscription(p.subscription_id)
    sub = state.subscription
    period_end = ensure_utc(p.period_end)
    closed = sub.current_period
    plan = uow.catalog.plan(sub.plan_id)
    next_plan = uow.catalog.plan(sub.pending_plan_id) if sub.pending_plan_id else None
    coupon = uow.catalog.coupon(sub.coupon.coupon_id) if sub.coupon else None
    usage = uow.usage_closes.pop(sub.id, None)
    if usage is None or usage.period_end != closed.end:
        usage = uow.close_usages([(sub.id, closed.start, closed.end)])[sub.id]
    ledger = uow.ledger(state)
    carried = sub.carried_credit_lines(state.currency)
    key = InvoiceKey(sub.id, InvoiceReason.PERIOD_CLOSE, closed)
    # NOTE: the billing instant of a close is the period end itself, so a close applied late (worker
    # down, backlog) rates exactly like one applied on time.
    result = rate_closed_period(
        subscription=sub, plan=plan, usage_totals_by_meter={MeterId(m): Decimal(q) for m, q in usage.totals.items()},
        credits=ledger.ledger, coupon=coupon, tax_rate_bps=state.tax_rate_bps, at=period_end,
        invoice_id=invoice_id_for(key), next_plan=next_plan, pending_proration_lines=carried,
        late_usage=_late_usage_as_rated(uow, sub, plan, usage.late))
    sub.take_carried_credit()  # now on this invoice
    # With a grace (a snapshot the scheduler put in the command), the invoice is stored DRAFT until it ends
    # and finalised then by handlers/drafts.py, with the usage of this period that arrived meanwhile.
    until = finalizes_at(period_end, p.finalize_after_seconds)
    invoice_id: str | None = result.invoice.id
    if result.invoice.lines or until is not None:
        uow.rating(result, state, plan.id, env, period_end, finalizes_at=until)
    else:
        # NOTE: nothing to bill (a cancellation at the period end with no usage, late usage or carried
        # credit: no fee follows) issues no invoice, like a final close: a numbered 0.00 invoice with no
        # lines told the customer nothing. The period is still closed and recorded (invoice_id NULL). A
        # draft (grace > 0) is kept: usage of the period may still land on it.
        invoice_id = None
        uow.grant_included(result.grants, state, env, period_end)
    # The closed period's included credits expire with it (a ledger rule); settle them now rather than
    # through a separate credits.expire command per subscription.
    # NOTE: a draft keeps them until it is finalised: usage of the period arriving during the grace draws
    # them as it would have before the period end (drafts.finalize_invoice expires them then).
    if until is None:
        uow.expire_credits(state, period_end, env)
    uow.periods.append({"subscription_id": sub.id, "period_start": closed.start, "period_end": closed.end,
                        "plan_id": plan.id, "seats": sub.seats, "invoice_id": invoice_id,
                        "closed_at": period_end})
    if result.next_period is not None:
        uow.periods.append(period_row(sub))
    recharge_after_close(uow, env, state, period_end)  # the close consumed credits: auto-recharge (issue 15)
    uow.subscription_events(state, env)
    return {"invoice_id": invoice_id}


def close_final(uow: BillingUnitOfWork, env: Envelope, state: SubscriptionState, at: datetime,
                reason: str) -> str | None:
    """End a subscription now (an immediate cancellation, dunning's give-up) with its final invoice: the
    current period closed at `at` by the domain's `close_final_period` (the close's own rating: usage since
    the last close, credits, late usage, carried credit, coupon, tax; no fee, no refund of the fee paid in
    advance), issued, numbered and charged at commit like any period close. Returns its id, or None when
    there was nothing to invoice (or the subscription had no open period: trialing)."""
    sub = state.subscription
    if sub.status not in CLOSABLE_STATUSES:
        sub.cancel(at=at, reason=reason)  # refused as an invalid transition when already cancelled
        return None
    current = sub.current_period
    end = min(ensure_utc(at), current.end)
    invoice_id: str | None = None
    if end > current.start:
        plan = uow.catalog.plan(sub.plan_id)
        coupon = uow.catalog.coupon(sub.coupon.coupon_id) if sub.coupon else None
        usage = uow.close_usages([(sub.id, current.start, end)])[sub.id]
        key = InvoiceKey(sub.id, InvoiceReason.PERIOD_CLOSE, Period(current.start, end))
        result = close_final_period(
            subscription=sub, plan=plan,
            usage_totals_by_meter={MeterId(m): Decimal(q) for m, q in usage.totals.items()},
            credits=uow.ledger(state).ledger, coupon=coupon, tax_rate_bps=state.tax_rate_bps, at=at,
            invoice_id=invoice_id_for(key), pending_proration_lines=sub.carried_credit_lines(state.currency),
            late_usage=_late_usage_as_rated(uow, sub, plan, usage.late))
        if result is not None:
            sub.take_carried_credit()  # now on this invoice
            uow.rating(result, state, plan.id, env, at)
            invoice_id = result.invoice.id
        uow.periods.append({"subscription_id": sub.id, "period_start": current.start, "period_end": end,
                            "plan_id": plan.id, "seats": sub.seats, "invoice_id": invoice_id, "closed_at": at})
        credit_unused_fee(uow, env, state, current, at)  # the plan's policy on the fee paid in advance
    sub.cancel(at=at, reason=reason)
    return invoice_id


def _late_usage(late: Sequence[Any]) -> list[LateUsage]:
    """The close's late usage hour by hour (what it marks billed), grouped as the domain bills it."""
    return group_late_usage((item.meter_id, item.bucket_start, item.bucket_start, Decimal(item.quantity))
                            for item in late)


def _late_usage_as_rated(uow: BillingUnitOfWork, sub: Subscription, plan: Plan,
                         late: Sequence[Any]) -> list[LateUsage]:
    """Late usage as the close rates it (``late_usage.late_usage_as_rated``, which the edge's preview applies
    too): what a period billed before its late units is read after this close's own marks, less them."""
    if not late:
        return []  # the common close: nothing arrived after its period was closed

    def billed_before(meter: str, period: Period, quantity: Decimal) -> Decimal:
        return uow.billed_usage(sub.id, [meter], period.start, period.end)[meter] - quantity

    return late_usage_as_rated(_late_usage(late), [(i.meter_id, i.bucket_start, Decimal(i.quantity)) for i in late],
                               plan, anchor=sub.anchor, interval=sub.interval, seats=sub.seats,
                               billed_before=billed_before)


CLOSE_PERIOD = Handler(close_period, prefetch=prefetch_closes, precheck=closable)
