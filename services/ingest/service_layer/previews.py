"""Previews (issue 14, item 5): the upcoming invoice of a subscription, and what a plan or seat change would
bill at a given instant (Stripe's upcoming invoice, with `subscription_proration_date`).

Both are computed by the domain code the billing worker bills with, over the same aggregates: the
subscription and its credit ledger rebuilt from the worker's rows (`shared.adapters.postgres.
billing_snapshots`, the worker's own rehydration) plus the usage so far. The upcoming invoice is the next
period close (`rating.close_period` at the period end: the usage so far rated against the included credits,
late usage, the next period's fee, the coupon, tax) or, during a trial, the first invoice at the trial end
(`rating.end_trial`: the trial's usage so far and the first fee). A change preview applies `Subscription.change_plan` /
`change_seats` at the instant asked, builds the immediate invoice with `rating.change_invoice` (or says the
change waits for the period end) and then the next close of the changed subscription.

Read-only: the aggregates are fresh copies loaded for the request and thrown away; nothing is written and
no command is sent. A domain refusal (`DomainError`: same plan, not sold per seat, another currency, ...) is
the refusal the real command would get from the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

import sqlalchemy as sa

from services.ingest.service_layer.refusals import NoUpcomingInvoice, UnknownSubscription
from shared.adapters.postgres.billing_snapshots import BillingSnapshot, load_snapshot
from shared.domain.calendar import ensure_utc
from shared.domain.catalog import Catalog, ChangeTiming, Plan, credit_kinds
from shared.domain.ids import invoice_id_for
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceReason
from shared.domain.late_usage import late_usage_as_rated
from shared.domain.rating import LateUsage, change_invoice, close_period, end_trial
from shared.domain.subscription import CLOSABLE_STATUSES, ChangeKind, SubscriptionStatus

Timing = Literal["auto", "immediate", "period_end"]


class Snapshots(Protocol):
    """Where previews read a subscription from: a fresh snapshot per call (the caller may mutate it)."""

    def snapshot(self, subscription_id: str) -> BillingSnapshot | None: ...


class SqlSnapshots:
    """`Snapshots` over the worker's read model, in one REPEATABLE READ transaction per snapshot (the
    subscription, its ledger and its usage as of one instant)."""

    def __init__(self, engine: sa.Engine, catalog: Catalog) -> None:
        self._engine = engine
        self._kinds = credit_kinds(catalog)

    def snapshot(self, subscription_id: str) -> BillingSnapshot | None:
        with self._engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            return load_snapshot(conn, subscription_id, self._kinds)


@dataclass(frozen=True)
class InvoicePreview:
    """An invoice the worker would issue: its draft (lines and totals, not numbered), the plan it bills and
    the instant it would be issued at. `estimate`: usage may still arrive before then (usage, credit,
    late-usage lines, and the discount and tax computed on them, may change)."""

    invoice: Invoice
    plan_id: str
    billed_at: datetime
    estimate: bool


@dataclass(frozen=True)
class UpcomingInvoice:
    subscription_id: str
    customer_id: str
    as_of: datetime
    invoice: InvoicePreview


@dataclass(frozen=True)
class ChangeRequest:
    """A plan change (`plan_id`, `timing` as `change-plan` takes it) or a seat change (`seats`)."""

    plan_id: str | None = None
    seats: int | None = None
    timing: Timing = "auto"


@dataclass(frozen=True)
class ChangePreview:
    """What the change would do at `at`: applied now (`invoice_now`: its proration invoice, None when it
    costs nothing) or deferred to `effective_at` (the period end, nothing billed now), then the next invoice
    of the changed subscription."""

    subscription_id: str
    customer_id: str
    at: datetime
    kind: ChangeKind
    timing: ChangeTiming
    effective_at: datetime
    invoice_now: InvoicePreview | None
    next_invoice: InvoicePreview | None

    @property
    def deferred(self) -> bool:
        return self.timing is ChangeTiming.PERIOD_END


def _load(snapshots: Snapshots, subscription_id: str) -> BillingSnapshot:
    snap = snapshots.snapshot(subscription_id)
    if snap is None:
        raise UnknownSubscription(f"no subscription {subscription_id!r}", field="subscription_id")
    return snap


def _settle(invoice: Invoice, snap: BillingSnapshot) -> None:
    """What finalisation does with the customer's credit balance (`Invoice.settle_balance`, which the
    worker's unit of work records as entries), applied to the snapshot's copy of the balance."""
    snap.balance_minor += invoice.settle_balance(snap.balance_minor).balance_change_minor


def _late_as_rated(snap: BillingSnapshot, plan: Plan) -> list[LateUsage]:
    """The snapshot's late usage as the worker's close rates it (``late_usage.late_usage_as_rated``): a meter
    with tiers or packages per period it belongs to, priced at its marginal position after what it billed."""
    sub = snap.subscription
    return late_usage_as_rated(snap.late_usage, snap.late_hours, plan, anchor=sub.anchor, interval=sub.interval,
                               seats=sub.seats, billed_before=snap.billed_before_late)


def next_invoice(snap: BillingSnapshot, catalog: Catalog, *, as_of: datetime) -> InvoicePreview | None:
    """The next invoice the worker will issue for `snap` on its own (no command): the close of the open
    period at its end, or the first invoice at the end of a trial; None when there is none (cancelled, or a
    trial that ends without a paid period). Mutates `snap` (a fresh copy)."""
    sub = snap.subscription
    plan = catalog.plan(sub.plan_id)
    coupon = catalog.coupon(sub.coupon.coupon_id) if sub.coupon else None
    if sub.status is SubscriptionStatus.TRIALING and sub.trial_end is not None:
        at = sub.trial_end
        # the worker's end_trial: the trial's usage so far rated against its credits, on the invoice issued then
        ended = end_trial(subscription=sub, plan=plan, usage_totals_by_meter=snap.usage_totals, credits=snap.ledger,
                          coupon=coupon, tax_rate_bps=snap.tax_rate_bps, at=at,
                          has_payment_method=sub.payment_method_id is not None, late_usage=_late_as_rated(snap, plan))
        if ended.result is None:
            return None
        _settle(ended.result.invoice, snap)
        return InvoicePreview(ended.result.invoice, plan.id, at, estimate=ensure_utc(as_of) < at)
    if sub.status not in CLOSABLE_STATUSES:
        return None
    closed = sub.current_period
    key = InvoiceKey(sub.id, InvoiceReason.PERIOD_CLOSE, closed)
    # NOTE: billed at the period end, the instant the worker's close rates at whenever it runs.
    result = close_period(
        subscription=sub, plan=plan, usage_totals_by_meter=snap.usage_totals, credits=snap.ledger, coupon=coupon,
        tax_rate_bps=snap.tax_rate_bps, at=closed.end, invoice_id=invoice_id_for(key),
        next_plan=catalog.plan(sub.pending_plan_id) if sub.pending_plan_id else None,
        pending_proration_lines=sub.carried_credit_lines(snap.currency), late_usage=_late_as_rated(snap, plan))
    _settle(result.invoice, snap)
    return InvoicePreview(result.invoice, plan.id, closed.end, estimate=ensure_utc(as_of) < closed.end)


def upcoming_invoice(snapshots: Snapshots, catalog: Catalog, subscription_id: str, *, now: datetime,
                     authorize: Callable[[str], None]) -> UpcomingInvoice:
    """The next invoice as it stands at `now` (`NoUpcomingInvoice` when the subscription will issue none).
    `authorize` is called with the subscription's customer before anything is computed."""
    snap = _load(snapshots, subscription_id)
    authorize(snap.subscription.customer_id)
    preview = next_invoice(snap, catalog, as_of=now)
    if preview is None:
        raise NoUpcomingInvoice(f"subscription {subscription_id} is {snap.subscription.status.value} and will "
                                "issue no further invoice")
    return UpcomingInvoice(subscription_id, snap.subscription.customer_id, now, preview)


def preview_change(snapshots: Snapshots, catalog: Catalog, subscription_id: str, request: ChangeRequest, *,
                   at: datetime, authorize: Callable[[str], None]) -> ChangePreview:
    """The plan or seat change of `request` applied at `at` to a copy of the subscription, as the worker's
    `change_plan` / `change_seats` handlers apply it: the immediate invoice it would issue, and the next
    invoice after it. The domain's refusals propagate (`DomainError`), as the worker would store them."""
    snap = _load(snapshots, subscription_id)
    sub = snap.subscription
    authorize(sub.customer_id)
    current = catalog.plan(sub.plan_id)
    if request.plan_id is not None:
        change = sub.change_plan(new_plan=catalog.plan(request.plan_id), current_plan=current, at=at,
                                 timing=None if request.timing == "auto" else ChangeTiming(request.timing))
    elif request.seats is not None:
        change = sub.change_seats(seats=request.seats, plan=current, at=at)
    else:
        raise ValueError("a change preview needs a plan_id or seats")
    now_invoice = None
    if change.lines and change.invoice_period is not None:
        key = InvoiceKey(sub.id, InvoiceReason.SUBSCRIPTION_CHANGE, change.invoice_period)
        draft = change_invoice(subscription=sub, lines=change.lines, invoice_period=change.invoice_period,
                               currency=snap.currency, tax_rate_bps=snap.tax_rate_bps, at=at,
                               invoice_id=invoice_id_for(key))
        _settle(draft, snap)
        now_invoice = InvoicePreview(draft, sub.plan_id, at, estimate=False)
    for grant in change.grants:  # the included credits the change adds, as the worker grants them
        grant.grant_into(snap.ledger)
    return ChangePreview(subscription_id=subscription_id, customer_id=sub.customer_id, at=at, kind=change.kind,
                         timing=change.timing, effective_at=change.effective_at, invoice_now=now_invoice,
                         next_invoice=next_invoice(snap, catalog, as_of=at))
