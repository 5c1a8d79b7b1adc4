"""Rows of the worker's read model -> the billing aggregates (``Subscription``, ``CreditLedger``), and a
read-only snapshot of one subscription for previews.

The billing worker (``services/billing_worker/adapters/billing_repository.py``) rehydrates its aggregates
with these functions inside its batch transaction; the edge builds the same aggregates from the same rows to
preview an invoice with the domain code that will bill it (``services/ingest/service_layer/previews.py``).
One rehydration for both, so a preview cannot drift from what the worker loads. Services never import each
other, hence shared here.

Nothing here writes. The snapshot's usage is what a period close would bill as things stand (see
``usage_reads``), read without the close's locks or marks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from shared.adapters.postgres.billed_usage import billed_usage
from shared.adapters.postgres.match import one_of
from shared.adapters.postgres.rows import plain_rows
from shared.adapters.postgres.schema.billing import (
    credit_entries,
    credit_grants,
    customer_balances,
    invoices,
    subscriptions,
)
from shared.adapters.postgres.schema.usage import usage_aggregates, usage_events
from shared.adapters.postgres.usage_reads import usage_since
from shared.domain.calendar import BillingAnchor, Interval, Period, period_containing
from shared.domain.catalog import MeterId, PlanId
from shared.domain.coupons import AppliedCoupon, CouponId
from shared.domain.ids import CustomerId, SubscriptionId
from shared.domain.late_usage import group_late_usage
from shared.domain.ledger import CreditGrant, CreditLedger, EntryKind, GrantSource, LedgerEntry, MeterCredit
from shared.domain.money import Money
from shared.domain.rating import LateUsage
from shared.domain.subscription import Subscription, SubscriptionStatus


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


# ----------------------------------------------------------------------------------------- subscriptions


def subscription_of_row(row: Any) -> Subscription:
    """The subscription aggregate stored in a ``subscriptions`` row (no pending events)."""
    keys = row.coupon_invoice_keys or []
    coupon = None
    if row.coupon_id is not None:
        coupon = AppliedCoupon(coupon_id=CouponId(row.coupon_id), redeemed_at=row.coupon_redeemed_at,
                               invoice_keys=frozenset(keys))
    return Subscription(
        id=SubscriptionId(row.subscription_id), customer_id=CustomerId(row.customer_id),
        plan_id=PlanId(row.plan_id), status=SubscriptionStatus(row.status), seats=row.seats,
        interval=Interval(row.interval),
        anchor=BillingAnchor(day=row.anchor_day, time_of_day=row.anchor_time, tz=row.timezone,
                             month=row.anchor_month),
        current_period=Period(row.current_period_start, row.current_period_end),
        started_at=row.started_at.astimezone(UTC), trial_end=_utc(row.trial_end),
        cancel_at_period_end=row.cancel_at_period_end,
        pending_plan_id=PlanId(row.pending_plan_id) if row.pending_plan_id else None,
        pending_seats=row.pending_seats, coupon=coupon, cancelled_at=_utc(row.cancelled_at), version=row.version,
        payment_method_id=row.payment_method_id, carried_credit_minor=row.carried_credit_minor,
        paused_at=_utc(row.paused_at), cancel_reason=row.cancel_reason)


# ----------------------------------------------------------------------------------------- credit ledger


def _grant_of(row: Any) -> CreditGrant:
    amount: Money | Decimal = (Money(row.amount_minor, row.currency) if row.amount_minor is not None
                               else Decimal(row.units))
    return CreditGrant(grant_id=row.grant_id, meter=row.meter_id, amount=amount, source=GrantSource(row.source),
                       effective_at=row.effective_at, expires_at=_utc(row.expires_at), priority=row.priority)


def _entry_of(row: Any, currency_of: Mapping[str, str | None], meter_of: Mapping[str, str]) -> LedgerEntry:
    currency = currency_of.get(row.grant_id)
    amount: Money | Decimal = (Money(row.amount_minor, currency or "USD") if row.amount_minor is not None
                               else Decimal(row.units))
    return LedgerEntry(entry_id=row.entry_id, account_id=row.subscription_id, meter=meter_of[row.grant_id],
                       grant_id=row.grant_id, kind=EntryKind(row.kind), amount=amount,
                       at=row.occurred_at.astimezone(UTC), reference=row.reference)


def ledger_rows(conn: sa.Connection, subscription_ids: Iterable[str], *, unsettled_only: bool = False
                ) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """The stored grant rows and entry rows of each subscription (two queries), in the order the ledger
    applied them: grants by grant time, entries by write order.

    With `unsettled_only`, only the grants not settled yet and their entries: a settled grant expired and
    what was left of it was written off (`settled_at`), so it holds nothing and is never drawn from again, and
    the ledger's balances and draws are the same without it. What needs a settled grant's history (reversing
    a consumption drawn from it, which forfeits that part) must load the whole ledger."""
    wanted = sorted(set(subscription_ids))
    grants_of: dict[str, list[Any]] = {}
    entries_of: dict[str, list[Any]] = {}
    if not wanted:
        return grants_of, entries_of
    gc, ec = credit_grants.c, credit_entries.c
    open_grants = [gc.settled_at.is_(None)] if unsettled_only else []
    grants = plain_rows(conn.execute(sa.select(credit_grants).where(one_of(gc.subscription_id, wanted), *open_grants)
                                     .order_by(gc.subscription_id, gc.granted_at, gc.grant_id)))
    if not grants:
        entries: Sequence[Any] = []
    elif unsettled_only:
        entries = plain_rows(conn.execute(sa.select(credit_entries)
                                          .join(credit_grants, gc.grant_id == ec.grant_id)
                                          .where(one_of(ec.subscription_id, wanted), gc.settled_at.is_(None))
                                          .order_by(ec.seq)))
    else:
        entries = plain_rows(conn.execute(sa.select(credit_entries).where(one_of(ec.subscription_id, wanted))
                                          .order_by(ec.seq)))
    for g in grants:
        grants_of.setdefault(g.subscription_id, []).append(g)
    for e in entries:
        entries_of.setdefault(e.subscription_id, []).append(e)
    return grants_of, entries_of


@lru_cache(maxsize=64)
def _meter_credits(currency: str, kinds: tuple[tuple[str, bool], ...]) -> tuple[MeterCredit, ...]:
    # Made once per currency and catalog (frozen values): a billing run opens a ledger per subscription.
    return tuple(MeterCredit(m, None if is_units else currency) for m, is_units in kinds)


def ledger_of_rows(subscription_id: str, currency: str, timezone: str, kinds: Mapping[str, bool],
                   grants: Sequence[Any], entries: Sequence[Any]) -> CreditLedger:
    """The credit ledger replayed from its stored rows. ``kinds``: meter -> True when its credits are units
    (``shared.domain.catalog.credit_kinds``)."""
    meters = _meter_credits(currency, tuple(kinds.items()))
    currency_of = {g.grant_id: g.currency for g in grants}
    meter_of = {g.grant_id: g.meter_id for g in grants}
    stored = [_entry_of(e, currency_of, meter_of) for e in entries]
    return CreditLedger.open(subscription_id, meters, timezone, [_grant_of(g) for g in grants], stored)


# ----------------------------------------------------------------------------------- snapshot for previews


@dataclass
class BillingSnapshot:
    """One subscription as the worker stored it, rebuilt as aggregates (fresh objects: a preview may mutate
    them), with the usage its next close would bill as things stand."""

    subscription: Subscription
    currency: str
    timezone: str
    tax_rate_bps: int
    ledger: CreditLedger
    usage_totals: dict[MeterId, Decimal]  # usage of the open period so far
    late_usage: list[LateUsage]  # unbilled usage of closed periods, as the close groups it
    balance_minor: int = 0  # the customer's credit balance in `currency` left for the next finalisations
    # the late usage hour by hour (meter, hour, unbilled quantity) and what the anchored periods it belongs to
    # billed before it: how the close rates late usage of a meter with a pricing model (tiers, packages)
    late_hours: list[tuple[str, datetime, Decimal]] = field(default_factory=list)
    late_billed: dict[tuple[str, Period], Decimal] = field(default_factory=dict)

    def billed_before_late(self, meter: str, period: Period, quantity: Decimal) -> Decimal:
        """What ``period`` billed of ``meter`` before its late units (``late_usage.late_usage_as_rated``)."""
        return self.late_billed.get((meter, period), Decimal(0))


def _balance_left(conn: sa.Connection, customer_id: str, currency: str) -> int:
    """The customer's balance in `currency` (no lock), less what its invoices still in DRAFT owe: they draw
    from it when their grace ends, before the next invoice of an open period."""
    held = conn.execute(sa.select(customer_balances.c.balance_minor).where(
        customer_balances.c.customer_id == customer_id, customer_balances.c.currency == currency)
    ).scalar_one_or_none()
    if not held:
        return 0
    inv = invoices.c
    owed = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(sa.func.greatest(inv.total_minor, 0)), 0)).where(
        inv.customer_id == customer_id, inv.currency == currency, inv.status == "draft")).scalar_one()
    return max(0, int(held) - int(owed))


def _drafts(conn: sa.Connection, subscription_id: str) -> list[Period]:
    """The periods of the subscription's period-close invoices still DRAFT (in their grace)."""
    inv = invoices.c
    return [Period(lo.astimezone(UTC), hi.astimezone(UTC)) for lo, hi in conn.execute(
        sa.select(inv.period_start, inv.period_end)
        .where(inv.subscription_id == subscription_id, inv.status == "draft", inv.kind == "period_close"))]


def _late_usage(conn: sa.Connection, subscription_id: str, period_start: datetime,
                pending: Mapping[str, Decimal]) -> list[LateUsage]:
    """Late usage per meter over the span of hours it came from, grouped as the worker's close groups it
    (``late_usage.group_late_usage``).

    # NOTE: usage of a period whose invoice is still a DRAFT (in its grace) is the draft's: finalising it
    # takes that usage (the worker's grace_usage), so it is not late usage of the next close. Counted by whole
    # hours: a draft period that does not end on the hour leaves its last partial hour counted as late here.
    """
    if not pending:
        return []
    agg = usage_aggregates.c
    lo = period_start.astimezone(UTC)
    unbilled = [agg.subscription_id == subscription_id, agg.bucket_start < lo, agg.quantity != agg.billed_quantity]
    for draft in _drafts(conn, subscription_id):
        unbilled.append(sa.not_(sa.and_(agg.bucket_start >= _floor_hour(draft.start), agg.bucket_start < draft.end)))
        owned: dict[str, Decimal] = {meter: Decimal(quantity or 0) for meter, quantity in conn.execute(
            sa.select(agg.meter_id, sa.func.sum(agg.quantity - agg.billed_quantity))
            .where(agg.subscription_id == subscription_id, agg.bucket_start >= _floor_hour(draft.start),
                   agg.bucket_start < min(draft.end, lo))
            .group_by(agg.meter_id))}
        pending = {m: q - owned.get(m, Decimal(0)) for m, q in pending.items()}
    spans = {meter: (first, last) for meter, first, last in conn.execute(
        sa.select(agg.meter_id, sa.func.min(agg.bucket_start), sa.func.max(agg.bucket_start))
        .where(*unbilled).group_by(agg.meter_id))}
    return group_late_usage((meter, spans[meter][0].astimezone(UTC), spans[meter][1].astimezone(UTC), quantity)
                            for meter, quantity in pending.items() if quantity > 0 and meter in spans)


def _late_hours(conn: sa.Connection, sub: Subscription, period_start: datetime
                ) -> tuple[list[tuple[str, datetime, Decimal]], dict[tuple[str, Period], Decimal]]:
    """The unbilled hours before ``period_start`` (those of a DRAFT's period excluded, as in ``_late_usage``)
    per meter, and what each anchored period they belong to billed so far (``billed_usage``, read before any
    close marks them: the position the close prices them from).

    # NOTE: the hour straddling a period start that is not on the hour holds current usage too: its events
    # from the period start on are left out, as ``usage_since`` does.
    """
    agg = usage_aggregates.c
    lo = period_start.astimezone(UTC)
    unbilled = [agg.subscription_id == sub.id, agg.bucket_start < lo, agg.quantity != agg.billed_quantity]
    for draft in _drafts(conn, sub.id):
        unbilled.append(sa.not_(sa.and_(agg.bucket_start >= _floor_hour(draft.start), agg.bucket_start < draft.end)))
    hours: dict[tuple[str, datetime], Decimal] = {
        (meter, bucket.astimezone(UTC)): Decimal(quantity) for meter, bucket, quantity in conn.execute(
            sa.select(agg.meter_id, agg.bucket_start, agg.quantity - agg.billed_quantity).where(*unbilled))}
    straddle = _floor_hour(lo)
    if straddle != lo:
        e = usage_events.c
        for meter, quantity in conn.execute(
                sa.select(e.meter_id, sa.func.sum(e.quantity))
                .where(e.subscription_id == sub.id, e.meter_id.is_not(None), e.occurred_at >= lo,
                       e.occurred_at < straddle + timedelta(hours=1)).group_by(e.meter_id)):
            if (meter, straddle) in hours:
                hours[(meter, straddle)] -= Decimal(quantity)
    late = [(meter, bucket, quantity) for (meter, bucket), quantity in sorted(hours.items()) if quantity]
    billed: dict[tuple[str, Period], Decimal] = {}
    for meter, bucket, _ in late:
        period = period_containing(sub.anchor, sub.interval, bucket)
        if (meter, period) not in billed:
            billed[(meter, period)] = billed_usage(conn, sub.id, [meter], period.start, period.end)[meter]
    return late, billed


def _floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def load_snapshot(conn: sa.Connection, subscription_id: str, kinds: Mapping[str, bool]) -> BillingSnapshot | None:
    """The subscription, its credit ledger, its usage so far and the customer's balance, read in the caller's
    connection (use one REPEATABLE READ transaction for a consistent view); None when the worker has no such
    subscription.

    # NOTE: the usage is every event with a timestamp from the open period's start on (``usage_since``), as
    # the worker's close would bill it if the period ended now; an event stamped after the period end would
    # wait for the next close instead.
    """
    row = conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == subscription_id)
                       ).one_or_none()
    if row is None:
        return None
    sub = subscription_of_row(row)
    grants, entries = ledger_rows(conn, [subscription_id])
    ledger = ledger_of_rows(subscription_id, row.currency, row.timezone, kinds, grants.get(subscription_id, []),
                            entries.get(subscription_id, []))
    usage = usage_since(conn, subscription_id, sub.current_period.start)
    late_hours, late_billed = _late_hours(conn, sub, sub.current_period.start) if usage.pending_late else ([], {})
    return BillingSnapshot(
        subscription=sub, currency=row.currency, timezone=row.timezone, tax_rate_bps=row.tax_rate_bps,
        ledger=ledger, usage_totals={MeterId(m): Decimal(q) for m, q in usage.totals.items()},
        late_usage=_late_usage(conn, subscription_id, sub.current_period.start, usage.pending_late),
        balance_minor=_balance_left(conn, row.customer_id, row.currency), late_hours=late_hours,
        late_billed=late_billed)
