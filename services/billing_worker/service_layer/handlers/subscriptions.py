"""Subscription lifecycle: create, change plan, change seats, cancel, pause, resume, end trial."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time
from decimal import Decimal
from typing import Any

from services.billing_worker.service_layer.errors import Ignored, Refused, error_code
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.handlers.periods import _late_usage_as_rated, close_final, period_row
from services.billing_worker.service_layer.model import SubscriptionState
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.messages import (
    CancelSubscription,
    ChangePlan,
    ChangeSeats,
    CreateSubscription,
    EndTrial,
    PauseSubscription,
    ResumeSubscription,
)
from shared.domain.calendar import BillingAnchor, Period, ensure_utc, zone
from shared.domain.catalog import ChangeTiming, MeterId, Plan
from shared.domain.coupons import Coupon
from shared.domain.errors import CurrencyMismatchError
from shared.domain.ids import CustomerId, SubscriptionId, invoice_id_for
from shared.domain.invoice import InvoiceKey, InvoiceLine, InvoiceReason
from shared.domain.rating import change_invoice, start_invoice, trial_credit_grants, trial_window_at
from shared.domain.rating import end_trial as rate_trial_end
from shared.domain.subscription import Subscription, SubscriptionStatus


def create_subscription(uow: BillingUnitOfWork, env: Envelope, p: CreateSubscription,
                        now: datetime) -> dict[str, Any]:
    if p.subscription_id in uow.states:
        raise Refused("already_exists", f"subscription {p.subscription_id} already exists")
    plan = uow.catalog.plan_in(p.plan_id, p.currency)  # the plan's price list in the customer's currency
    try:
        plan.require_sold_in(p.currency)
    except CurrencyMismatchError as mismatch:
        # the domain's rule; the outcome keeps the worker's wording, which names the plan
        raise Refused(error_code(mismatch),
                      f"plan {plan.id} is sold in {mismatch.left}, not {mismatch.right}") from None
    at = ensure_utc(p.start_at or now)
    coupon = uow.catalog.coupon(p.coupon_id) if p.coupon_id else None
    # Counted only when a limit can refuse the redemption: the count is a read of every attachment of the
    # coupon, so for an unlimited coupon each signup cost more than the one before (0.55 ms on average over
    # a benchmark's first 10,000 signups with one coupon) and decided nothing.
    times = uow.coupon_times_redeemed(coupon.id) if coupon is not None and coupon.max_redemptions is not None else 0
    anchor = (BillingAnchor(day=p.anchor_day, time_of_day=time(0, 0), tz=p.timezone,
                            month=at.astimezone(zone(p.timezone)).month) if p.anchor_day else None)
    sub = Subscription.start(subscription_id=SubscriptionId(p.subscription_id),
                             customer_id=CustomerId(p.customer_id), plan=plan, at=at, seats=p.seats,
                             trial_days=p.trial_days, anchor=anchor, tz=p.timezone, coupon=coupon,
                             coupon_times_redeemed=times, payment_method_id=p.payment_method_id)
    state = SubscriptionState(sub, p.currency, p.timezone, p.tax_rate_bps)
    uow.states[state.id] = state
    if coupon is not None:
        uow.attach_coupon(coupon.id, state.id, at)
    uow.periods.append(period_row(sub))
    invoice_id = None
    if sub.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
        invoice_id = start_first_invoice(uow, env, state, plan, coupon, at)
    uow.grant_included(trial_credit_grants(subscription=sub, plan=plan), state, env, at)
    uow.subscription_events(state, env)
    return {"invoice_id": invoice_id}


def start_first_invoice(uow: BillingUnitOfWork, env: Envelope, state: SubscriptionState, plan: Plan,
                        coupon: Coupon | None, at: datetime) -> str:
    """The invoice a paid period starts with (at creation, or when a trial ends)."""
    sub = state.subscription
    if coupon is None and sub.coupon is not None:
        coupon = uow.catalog.coupon(sub.coupon.coupon_id)
    key = InvoiceKey(sub.id, InvoiceReason.SUBSCRIPTION_START, sub.current_period)
    result = start_invoice(subscription=sub, plan=plan, coupon=coupon, tax_rate_bps=state.tax_rate_bps, at=at,
                           invoice_id=invoice_id_for(key))
    uow.rating(result, state, plan.id, env, at)
    return result.invoice.id


def change_plan(uow: BillingUnitOfWork, env: Envelope, p: ChangePlan, now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    sub = state.subscription
    current_plan = uow.catalog.plan(sub.plan_id)
    change = sub.change_plan(new_plan=uow.catalog.plan_in(p.plan_id, current_plan.currency), current_plan=current_plan,
                             at=now, timing=None if p.timing == "auto" else ChangeTiming(p.timing))
    invoice_id = _change_invoice(uow, env, state, change.lines, change.invoice_period, now)
    uow.grant_included(change.grants, state, env, now)
    uow.subscription_events(state, env)
    return {"change": change.kind.value, "timing": change.timing.value, "invoice_id": invoice_id}


def change_seats(uow: BillingUnitOfWork, env: Envelope, p: ChangeSeats, now: datetime) -> dict[str, Any]:
    state = uow.subscription(p.subscription_id)
    sub = state.subscription
    change = sub.change_seats(seats=p.seats, plan=uow.catalog.plan(sub.plan_id), at=now)
    invoice_id = _change_invoice(uow, env, state, change.lines, change.invoice_period, now)
    uow.grant_included(change.grants, state, env, now)
    uow.subscription_events(state, env)
    return {"change": change.kind.value, "timing": change.timing.value, "invoice_id": invoice_id}


def _change_invoice(uow: BillingUnitOfWork, env: Envelope, state: SubscriptionState,
                    lines: Sequence[InvoiceLine], period: Period | None, at: datetime) -> str | None:
    """The proration invoice of an immediate change (none when the change is deferred or costs nothing)."""
    if not lines or period is None:
        return None
    sub = state.subscription
    key = InvoiceKey(sub.id, InvoiceReason.SUBSCRIPTION_CHANGE, period)
    invoice = change_invoice(subscription=sub, lines=lines, invoice_period=period, currency=state.currency,
                             tax_rate_bps=state.tax_rate_bps, at=at, invoice_id=invoice_id_for(key))
    uow.issue(invoice, state, sub.plan_id, env)
    return invoice.id


def cancel(uow: BillingUnitOfWork, env: Envelope, p: CancelSubscription, now: datetime) -> dict[str, Any] | None:
    state = uow.subscription(p.subscription_id)
    reason = p.reason or "requested"
    if p.at_period_end:
        state.subscription.cancel(at=now, at_period_end=True, reason=reason)
        uow.subscription_events(state, env)
        return None
    # Cancelling now closes the open period: the usage since the last close is rated and invoiced.
    invoice_id = close_final(uow, env, state, now, reason)
    uow.subscription_events(state, env)
    return {"invoice_id": invoice_id}


def pause(uow: BillingUnitOfWork, env: Envelope, p: PauseSubscription, now: datetime) -> None:
    state = uow.subscription(p.subscription_id)
    state.subscription.pause(at=now)
    uow.subscription_events(state, env)


def resume(uow: BillingUnitOfWork, env: Envelope, p: ResumeSubscription, now: datetime) -> None:
    state = uow.subscription(p.subscription_id)
    state.subscription.resume(at=now)
    uow.subscription_events(state, env)


def trial_endable(uow: BillingUnitOfWork, p: EndTrial, now: datetime) -> None:
    """Raise Ignored unless this is the end of the subscription's open trial (a stale or replayed tick)."""
    sub = uow.subscription(p.subscription_id).subscription
    if sub.status is not SubscriptionStatus.TRIALING or sub.trial_end != ensure_utc(p.trial_end):
        raise Ignored(f"trial ending {p.trial_end.isoformat()} is not the subscription's open trial")


def end_trial(uow: BillingUnitOfWork, env: Envelope, p: EndTrial, now: datetime) -> dict[str, Any]:
    trial_endable(uow, p, now)
    state = uow.subscription(p.subscription_id)
    sub = state.subscription
    plan = uow.catalog.plan(sub.plan_id)
    at = ensure_utc(p.trial_end)
    # The trial window is closed like a period: its usage rated against the trial's credits (before they
    # expire) and billed on the invoice issued at the trial end (rating.end_trial), not left for the first
    # paid close to find as late usage.
    window = trial_window_at(sub, at)
    usage = uow.close_usages([(sub.id, window.start, window.end)])[sub.id] if window else None
    coupon = uow.catalog.coupon(sub.coupon.coupon_id) if sub.coupon else None
    ended = rate_trial_end(
        subscription=sub, plan=plan,
        usage_totals_by_meter={MeterId(m): Decimal(q) for m, q in usage.totals.items()} if usage else {},
        credits=uow.ledger(state).ledger, coupon=coupon, tax_rate_bps=state.tax_rate_bps, at=at,
        has_payment_method=sub.payment_method_id is not None,
        late_usage=_late_usage_as_rated(uow, sub, plan, usage.late) if usage else ())
    invoice_id = None
    if ended.result is not None:
        uow.rating(ended.result, state, plan.id, env, at)
        invoice_id = ended.result.invoice.id
    uow.expire_credits(state, at, env)  # the trial's credits end with it (early conversion: at their expiry)
    uow.touch(state)
    if window is not None:
        uow.periods.append({"subscription_id": sub.id, "period_start": window.start, "period_end": window.end,
                            "plan_id": plan.id, "seats": sub.seats, "invoice_id": invoice_id, "closed_at": at})
    if sub.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
        uow.periods.append(period_row(sub))
    uow.subscription_events(state, env)
    return {"invoice_id": invoice_id}


CREATE = Handler(create_subscription)
CHANGE_PLAN = Handler(change_plan)
CHANGE_SEATS = Handler(change_seats)
CANCEL = Handler(cancel)
PAUSE = Handler(pause)
RESUME = Handler(resume)
END_TRIAL = Handler(end_trial, precheck=trial_endable)
