"""The edge's read side (cosmicpython's `views.py`): billing history queried straight from the worker's read
model and the edge's audit log, with no domain object and no unit of work in between.

Reads change nothing, so they need neither aggregates nor a transaction of their own: each function opens
one connection, runs its queries and returns the response models of `services/ingest/views.py`. Pages are
keyset pages (ascending unique key, `after` the last key of the previous page); a function answers the page
and the key to continue after, or None when nothing follows. The route turns that key into a cursor.
"usage so far" is the one read with a rule in it: `usage_so_far` prices what `period_reading` loaded
(pure, unit-tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from services.ingest.usage_estimate import estimate_usage
from services.ingest.views import (
    AuditEntryView,
    CreditBalanceView,
    InvoiceLineView,
    InvoiceView,
    LedgerEntryView,
    MeterUsageView,
    PaymentAttemptView,
    SubscriptionView,
    UsageSoFarView,
)
from shared.adapters.postgres.schema.billing import (
    credit_entries,
    invoice_lines,
    invoices,
    payment_attempts,
    subscriptions,
)
from shared.adapters.postgres.schema.edge import audit_log
from shared.adapters.postgres.usage_reads import GrantBalance, PeriodUsage, grant_balances, usage_since
from shared.domain.catalog import Meter, MeterId, Plan

LAST_SECOND = timedelta(seconds=1)  # rating draws credits at the last second of the period


def _page(engine: sa.Engine, query: sa.Select[Any], key: sa.ColumnElement[Any], after: Any,
          limit: int) -> tuple[list[Any], str | None]:
    """Keyset pagination over `key` (unique, ascending): up to `limit` rows after `after`, and the key to
    continue after when more follow."""
    if after is not None:
        query = query.where(key > after)
    with engine.connect() as conn:
        rows = list(conn.execute(query.order_by(key).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, str(rows[-1]._mapping[key]) if more and rows else None


def subscriptions_of(engine: sa.Engine, customer_id: str, after: str | None,
                     limit: int) -> tuple[list[SubscriptionView], str | None]:
    rows, nxt = _page(engine, sa.select(subscriptions).where(subscriptions.c.customer_id == customer_id),
                      subscriptions.c.subscription_id, after, limit)
    return [SubscriptionView.model_validate(r._mapping) for r in rows], nxt


def subscription(engine: sa.Engine, subscription_id: str) -> SubscriptionView | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == subscription_id)
                           ).one_or_none()
    return None if row is None else SubscriptionView.model_validate(row._mapping)


def _with_lines(conn: sa.Connection, rows: list[Any]) -> list[InvoiceView]:
    ids = [r.invoice_id for r in rows]
    lines: dict[str, list[InvoiceLineView]] = {i: [] for i in ids}
    if ids:
        for line in conn.execute(sa.select(invoice_lines).where(invoice_lines.c.invoice_id.in_(ids))
                                 .order_by(invoice_lines.c.invoice_id, invoice_lines.c.line_no)):
            lines[line.invoice_id].append(InvoiceLineView.model_validate(line._mapping))
    return [InvoiceView.model_validate({**r._mapping, "lines": lines[r.invoice_id]}) for r in rows]


def invoices_of(engine: sa.Engine, customer_id: str, after: str | None,
                limit: int) -> tuple[list[InvoiceView], str | None]:
    """A customer's invoices by id, each with its lines."""
    rows, nxt = _page(engine, sa.select(invoices).where(invoices.c.customer_id == customer_id),
                      invoices.c.invoice_id, after, limit)
    with engine.connect() as conn:
        return _with_lines(conn, rows), nxt


def invoice(engine: sa.Engine, invoice_id: str) -> InvoiceView | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(invoices).where(invoices.c.invoice_id == invoice_id)).one_or_none()
        return _with_lines(conn, [row])[0] if row is not None else None


def attempt_statuses(engine: sa.Engine, invoice_id: str) -> set[str]:
    """The statuses of the invoice's payment attempts."""
    a = payment_attempts.c
    with engine.connect() as conn:
        return set(conn.execute(sa.select(a.status).distinct().where(a.invoice_id == invoice_id)).scalars())


def payments_of(engine: sa.Engine, customer_id: str, after: str | None,
                limit: int) -> tuple[list[PaymentAttemptView], str | None]:
    rows, nxt = _page(engine, sa.select(payment_attempts).where(payment_attempts.c.customer_id == customer_id),
                      payment_attempts.c.attempt_id, after, limit)
    return [PaymentAttemptView.model_validate(r._mapping) for r in rows], nxt


def credit_view(g: GrantBalance) -> CreditBalanceView:
    return CreditBalanceView(grant_id=g.grant_id, meter_id=g.meter_id, source=g.source, currency=g.currency,
                             granted_minor=g.granted_minor, remaining_minor=g.remaining_minor,
                             granted_units=g.granted_units, remaining_units=g.remaining_units,
                             effective_at=g.effective_at, expires_at=g.expires_at)


def credit_balances(engine: sa.Engine, subscription_id: str) -> list[CreditBalanceView]:
    with engine.connect() as conn:
        return [credit_view(g) for g in grant_balances(conn, subscription_id)]


def ledger_of(engine: sa.Engine, subscription_id: str, after: str | None,
              limit: int) -> tuple[list[LedgerEntryView], str | None]:
    rows, nxt = _page(engine, sa.select(credit_entries).where(credit_entries.c.subscription_id == subscription_id),
                      credit_entries.c.entry_id, after, limit)
    return [LedgerEntryView.model_validate(r._mapping) for r in rows], nxt


def audit_of(engine: sa.Engine, customer_id: str, after: int | None,
             limit: int) -> tuple[list[AuditEntryView], str | None]:
    """A customer's audit trail in the order it was written (by row id)."""
    rows, nxt = _page(engine, sa.select(audit_log).where(audit_log.c.customer_id == customer_id),
                      audit_log.c.id, after, limit)
    return [AuditEntryView.model_validate(r._mapping) for r in rows], nxt


@dataclass(frozen=True)
class PeriodReading:
    """What "usage so far" is computed from: the subscription's current period, its usage, and the credit
    grants usable at the period's last second (the ones its close will draw from)."""

    subscription_id: str
    customer_id: str
    plan_id: str
    status: str
    period_start: datetime
    period_end: datetime
    usage: PeriodUsage
    grants: list[GrantBalance]


def period_reading(engine: sa.Engine, subscription_id: str) -> PeriodReading:
    """Read in one connection; the subscription must exist (its owner was checked before)."""
    with engine.connect() as conn:
        return read_period(conn, subscription_id)


def read_period(conn: sa.Connection, subscription_id: str) -> PeriodReading:
    """`period_reading` on the caller's connection."""
    sub = conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == subscription_id)).one()
    usage = usage_since(conn, subscription_id, sub.current_period_start)
    grants = grant_balances(conn, subscription_id, usable_at=sub.current_period_end - LAST_SECOND)
    return PeriodReading(subscription_id=subscription_id, customer_id=sub.customer_id, plan_id=sub.plan_id,
                         status=sub.status, period_start=sub.current_period_start,
                         period_end=sub.current_period_end, usage=usage, grants=grants)


def usage_so_far(reading: PeriodReading, plan: Plan, meters: Mapping[MeterId, Meter], now: datetime) -> UsageSoFarView:
    """Usage per meter since the current period started, the credits the period close will draw from, and
    the resulting charge. A money grant covers a meter only in the plan's currency; unit grants cover units."""
    money_left: dict[str, int] = {}
    units_left: dict[str, Decimal] = {}
    for g in reading.grants:
        if g.remaining_minor is not None and g.currency == plan.currency:
            money_left[g.meter_id] = money_left.get(g.meter_id, 0) + g.remaining_minor
        elif g.remaining_units is not None:
            units_left[g.meter_id] = units_left.get(g.meter_id, Decimal(0)) + g.remaining_units
    estimates = estimate_usage(plan, reading.usage.totals, money_left, units_left)
    views = []
    for e in estimates:
        pricing = plan.pricing_for(e.meter_id)
        meter = meters.get(MeterId(e.meter_id))
        views.append(MeterUsageView(
            meter_id=e.meter_id, unit=meter.unit if meter is not None else None, quantity=e.quantity,
            late_quantity=reading.usage.pending_late.get(e.meter_id, Decimal(0)), treatment=e.treatment.value,
            unit_price=pricing.unit_price.amount if pricing is not None and pricing.unit_price else None,
            gross_minor=e.gross.amount_minor if e.gross is not None else None,
            credit_remaining_minor=money_left.get(e.meter_id), credit_remaining_units=units_left.get(e.meter_id),
            credit_applied_minor=e.credit_applied.amount_minor if e.credit_applied is not None else None,
            credit_applied_units=e.credit_units_applied if e.credit_units_applied else None,
            billable_quantity=e.billable_quantity, estimated_charge_minor=e.charge.amount_minor))
    return UsageSoFarView(
        subscription_id=reading.subscription_id, customer_id=reading.customer_id, plan_id=reading.plan_id,
        status=reading.status, currency=plan.currency, period_start=reading.period_start,
        period_end=reading.period_end, as_of=now, meters=views,
        estimated_usage_charge_minor=sum(e.charge.amount_minor for e in estimates),
        credits=[credit_view(g) for g in reading.grants])
