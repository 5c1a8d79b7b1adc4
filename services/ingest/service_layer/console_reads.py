"""The operator console's read side: the aggregates and lists its pages show, queried from the worker's read
model and the edge's tables (like `views.py`: no domain object, no unit of work, reads change nothing).

Each page costs one connection and a few set-based queries (no query per row): totals are summed by
PostgreSQL (`GROUP BY`), lists are keyset pages. Amounts stay integers of minor units per currency; months
and days are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from services.ingest.views import PaymentAttemptView
from shared.adapters.postgres.schema.billing import (
    invoices,
    payment_attempts,
    subscription_history,
    subscription_periods,
)
from shared.adapters.postgres.schema.core import customer_aliases, customers
from shared.adapters.postgres.schema.dunning import dunning_cases, dunning_notifications
from shared.adapters.postgres.schema.edge import api_keys, audit_log, unmatched_usage
from shared.adapters.postgres.schema.quota import quota_org_months
from shared.adapters.postgres.schema.usage import usage_aggregates

USAGE_DAYS = 30  # the overview's usage chart: this many days up to the billing clock's today
BILLED = ("open", "paid", "uncollectible")  # finalised and not voided: what was invoiced


@dataclass(frozen=True)
class MonthRevenue:
    month: str  # YYYY-MM (UTC, by the invoice's finalisation instant)
    invoiced_minor: int
    collected_minor: int
    written_off_minor: int


@dataclass(frozen=True)
class CurrencyOverview:
    currency: str
    months: list[MonthRevenue]
    open_minor: int  # still owed on open invoices
    open_count: int
    uncollectible_minor: int  # written off
    uncollectible_count: int


@dataclass(frozen=True)
class Overview:
    by_currency: list[CurrencyOverview]  # the currency with the most invoiced first
    customer_count: int


def _months(first: str, last: str) -> list[str]:
    """Every YYYY-MM from `first` to `last` inclusive."""
    year, month = int(first[:4]), int(first[5:7])
    out = []
    while f"{year:04d}-{month:02d}" <= last:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


OWED = invoices.c.amount_due_minor - invoices.c.amount_paid_minor - invoices.c.pre_payment_credit_minor


def overview(engine: sa.Engine) -> Overview:
    """Revenue invoiced / collected / written off by month and currency, open and uncollectible totals:
    grouped queries over the invoices, in one connection."""
    month = sa.func.to_char(sa.func.timezone("UTC", invoices.c.issued_at), "YYYY-MM")
    revenue = (sa.select(invoices.c.currency, month.label("month"),
                         sa.func.sum(sa.func.greatest(invoices.c.total_minor, 0)).label("invoiced"),
                         sa.func.sum(invoices.c.amount_paid_minor).label("collected"),
                         sa.func.sum(OWED).filter(invoices.c.status == "uncollectible").label("written_off"))
               .where(invoices.c.status.in_(BILLED), invoices.c.issued_at.is_not(None))
               .group_by(invoices.c.currency, month))
    owed = (sa.select(invoices.c.currency, invoices.c.status, sa.func.sum(OWED).label("owed"),
                      sa.func.count().label("n"))
            .where(invoices.c.status.in_(("open", "uncollectible")))
            .group_by(invoices.c.currency, invoices.c.status))
    with engine.connect() as conn:
        rev_rows = list(conn.execute(revenue))
        owed_rows = list(conn.execute(owed))
        customer_count = int(conn.execute(sa.select(sa.func.count()).select_from(customers)).scalar_one())
    per: dict[str, dict[str, Any]] = {}
    for r in rev_rows:
        per.setdefault(r.currency, {"months": {}})["months"][r.month] = MonthRevenue(
            r.month, int(r.invoiced or 0), int(r.collected or 0), int(r.written_off or 0))
    for r in owed_rows:
        per.setdefault(r.currency, {"months": {}})[r.status] = (int(r.owed or 0), int(r.n))
    result = []
    for currency, data in per.items():
        found: dict[str, MonthRevenue] = data["months"]
        months = ([found.get(m, MonthRevenue(m, 0, 0, 0)) for m in _months(min(found), max(found))]
                  if found else [])
        result.append(CurrencyOverview(currency, months, *data.get("open", (0, 0)), *data.get("uncollectible", (0, 0))))
    result.sort(key=lambda c: (-sum(m.invoiced_minor for m in c.months), c.currency))
    return Overview(result, customer_count)


def usage_per_day(engine: sa.Engine, today: date) -> list[tuple[date, int]]:
    """Usage events per UTC day (by the event's timestamp) over the last USAGE_DAYS days up to `today`, gaps
    as 0: summed from the worker's hourly aggregates.

    # NOTE: no index serves a time range across every subscription (the aggregates' key starts with the
    # subscription, and an index on the hour alone would cost every usage batch), so this scans the
    # aggregates (~165k rows at the demo's size, ~90 ms on the shared 2-core machine): the overview loads it
    # after the page, as a fragment.
    """
    start = datetime.combine(today - timedelta(days=USAGE_DAYS - 1), time.min, tzinfo=UTC)
    day = sa.func.date(sa.func.timezone("UTC", usage_aggregates.c.bucket_start))
    usage = (sa.select(day.label("day"), sa.func.sum(usage_aggregates.c.event_count).label("events"))
             .where(usage_aggregates.c.bucket_start >= start)
             .group_by(day))
    with engine.connect() as conn:
        found = {r.day: int(r.events) for r in conn.execute(usage)}
    days = [today - timedelta(days=USAGE_DAYS - 1 - i) for i in range(USAGE_DAYS)]
    return [(d, found.get(d, 0)) for d in days]


@dataclass(frozen=True)
class CustomerRow:
    customer_id: str
    external_id: str
    name: str
    email: str
    kind: str
    currency: str
    created_at: datetime


def find_customers(engine: sa.Engine, query: str | None, after: str | None,
                   limit: int) -> tuple[list[CustomerRow], str | None]:
    """Customers by id, keyset-paged; with a query, those whose id, external id or an alias equals it, or
    whose email starts with it (case-insensitive)."""
    select = sa.select(customers.c.customer_id, customers.c.external_id, customers.c.name, customers.c.email,
                       customers.c.kind, customers.c.currency, customers.c.created_at)
    if query:
        text = query.strip()
        aliased = sa.select(customer_aliases.c.customer_id).where(customer_aliases.c.alias == text)
        select = select.where(sa.or_(customers.c.customer_id == text, customers.c.external_id == text,
                                     customers.c.customer_id.in_(aliased),
                                     sa.func.lower(customers.c.email).startswith(text.lower(), autoescape=True)))
    if after is not None:
        select = select.where(customers.c.customer_id > after)
    with engine.connect() as conn:
        rows = list(conn.execute(select.order_by(customers.c.customer_id).limit(limit + 1)))
    page = [CustomerRow(**r._mapping) for r in rows[:limit]]
    return page, page[-1].customer_id if len(rows) > limit and page else None


def admin_key_active(engine: sa.Engine, key_id: str) -> bool:
    """Is this API key still unrevoked and an admin key (a console session lasts only as long as its key)?"""
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.literal(1)).where(
            api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None),
            api_keys.c.scopes.any("admin"))).first() is not None


INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")


@dataclass(frozen=True)
class InvoiceRow:
    invoice_id: str
    number: str | None
    customer_id: str
    subscription_id: str
    kind: str
    status: str
    currency: str
    period_start: datetime
    period_end: datetime
    total_minor: int
    owed_minor: int
    amount_paid_minor: int
    issued_at: datetime | None
    created_at: datetime


def _month_range(month: str) -> tuple[datetime, datetime]:
    """'2026-03' -> [2026-03-01, 2026-04-01) in UTC; ValueError when it is not a YYYY-MM month."""
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    return start, (start + timedelta(days=32)).replace(day=1)


def invoice_page(engine: sa.Engine, *, customer_id: str | None = None, status: str | None = None,
                 month: str | None = None, after: str | None = None,
                 limit: int = 50) -> tuple[list[InvoiceRow], str | None]:
    """Invoices newest first (by creation, then id), optionally of one customer, of one status, and whose
    billing period starts in one month (YYYY-MM). `after` is the `created_at|invoice_id` of the last row seen."""
    query = sa.select(invoices.c.invoice_id, invoices.c.number, invoices.c.customer_id, invoices.c.subscription_id,
                      invoices.c.kind, invoices.c.status, invoices.c.currency, invoices.c.period_start,
                      invoices.c.period_end, invoices.c.total_minor, OWED.label("owed_minor"),
                      invoices.c.amount_paid_minor, invoices.c.issued_at, invoices.c.created_at)
    if customer_id is not None:
        query = query.where(invoices.c.customer_id == customer_id)
    if status:
        query = query.where(invoices.c.status == status)
    if month:
        start, end = _month_range(month)
        query = query.where(invoices.c.period_start >= start, invoices.c.period_start < end)
    if after:
        created, _, invoice_id = after.partition("|")
        query = query.where(sa.tuple_(invoices.c.created_at, invoices.c.invoice_id)
                            < sa.tuple_(sa.literal(datetime.fromisoformat(created)), sa.literal(invoice_id)))
    with engine.connect() as conn:
        rows = list(conn.execute(query.order_by(invoices.c.created_at.desc(), invoices.c.invoice_id.desc())
                                 .limit(limit + 1)))
    page = [InvoiceRow(**r._mapping) for r in rows[:limit]]
    more = len(rows) > limit and page
    return page, f"{page[-1].created_at.isoformat()}|{page[-1].invoice_id}" if more else None


@dataclass(frozen=True)
class CustomerDetail:
    customer: dict[str, Any]
    aliases: list[str]
    dunning_cases: list[dict[str, Any]]
    notices: list[dict[str, Any]]
    quota_months: list[dict[str, Any]]
    audit: list[dict[str, Any]]  # newest first


def customer_detail(engine: sa.Engine, customer_id: str, *, recent: int = 20) -> CustomerDetail | None:
    """What the customer page shows beside the API's reads: the customer and its aliases, its dunning cases
    and notices, its report-credit months and its newest audit entries (each an indexed read, one connection)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(customers).where(customers.c.customer_id == customer_id)).one_or_none()
        if row is None:
            return None
        aliases = list(conn.execute(sa.select(customer_aliases.c.alias)
                                    .where(customer_aliases.c.customer_id == customer_id)
                                    .order_by(customer_aliases.c.alias)).scalars())
        cases = [dict(r._mapping) for r in conn.execute(
            sa.select(dunning_cases).where(dunning_cases.c.customer_id == customer_id)
            .order_by(dunning_cases.c.opened_at.desc()).limit(recent))]
        notices = [dict(r._mapping) for r in conn.execute(
            sa.select(dunning_notifications.c.kind, dunning_notifications.c.channel,
                      dunning_notifications.c.recipient, dunning_notifications.c.subject,
                      dunning_notifications.c.decided_at, dunning_notifications.c.status,
                      dunning_notifications.c.invoice_id)
            .where(dunning_notifications.c.customer_id == customer_id)
            .order_by(dunning_notifications.c.seq.desc()).limit(recent))]
        months = [dict(r._mapping) for r in conn.execute(
            sa.select(quota_org_months).where(quota_org_months.c.org_id == customer_id)
            .order_by(quota_org_months.c.month_start.desc()).limit(6))]
        audit = [dict(r._mapping) for r in conn.execute(
            sa.select(audit_log).where(audit_log.c.customer_id == customer_id)
            .order_by(audit_log.c.id.desc()).limit(recent))]
    return CustomerDetail(dict(row._mapping), aliases, cases, notices, months, audit)


def dunning_page(engine: sa.Engine, *, status: str | None, after: str | None,
                 limit: int = 50) -> tuple[list[dict[str, Any]], str | None]:
    """Dunning cases, newest first by case id order of opening (`after`: `opened_at|case_id`)."""
    query = sa.select(dunning_cases.c.case_id, dunning_cases.c.invoice_id, dunning_cases.c.customer_id,
                      dunning_cases.c.subscription_id, dunning_cases.c.amount_minor, dunning_cases.c.currency,
                      dunning_cases.c.opened_at, dunning_cases.c.status, dunning_cases.c.next_wake_at,
                      dunning_cases.c.closed_at, dunning_cases.c.closed_reason,
                      sa.func.jsonb_array_length(dunning_cases.c.failures).label("failures"))
    if status:
        query = query.where(dunning_cases.c.status == status)
    if after:
        opened, _, case_id = after.partition("|")
        query = query.where(sa.tuple_(dunning_cases.c.opened_at, dunning_cases.c.case_id)
                            < sa.tuple_(sa.literal(datetime.fromisoformat(opened)), sa.literal(case_id)))
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            query.order_by(dunning_cases.c.opened_at.desc(), dunning_cases.c.case_id.desc()).limit(limit + 1))]
    page = rows[:limit]
    more = len(rows) > limit and page
    return page, f"{page[-1]['opened_at'].isoformat()}|{page[-1]['case_id']}" if more else None


@dataclass(frozen=True)
class SubscriptionDetail:
    periods: list[dict[str, Any]]  # newest first
    history: list[dict[str, Any]]  # newest first: plan, seat and status changes
    usage_by_day: dict[str, dict[date, Decimal]]  # meter -> UTC day -> quantity, over the current period


def subscription_detail(engine: sa.Engine, subscription_id: str, period_start: datetime,
                        period_end: datetime, *, recent: int = 24) -> SubscriptionDetail:
    """The subscription page's history and its usage per meter and UTC day over [period_start, period_end)."""
    day = sa.func.date(sa.func.timezone("UTC", usage_aggregates.c.bucket_start))
    with engine.connect() as conn:
        periods = [dict(r._mapping) for r in conn.execute(
            sa.select(subscription_periods).where(subscription_periods.c.subscription_id == subscription_id)
            .order_by(subscription_periods.c.period_start.desc()).limit(recent))]
        history = [dict(r._mapping) for r in conn.execute(
            sa.select(subscription_history).where(subscription_history.c.subscription_id == subscription_id)
            .order_by(subscription_history.c.occurred_at.desc(), subscription_history.c.id.desc()).limit(recent))]
        usage: dict[str, dict[date, Decimal]] = {}
        for r in conn.execute(
                sa.select(usage_aggregates.c.meter_id, day.label("day"),
                          sa.func.sum(usage_aggregates.c.quantity).label("quantity"))
                .where(usage_aggregates.c.subscription_id == subscription_id,
                       usage_aggregates.c.bucket_start >= period_start, usage_aggregates.c.bucket_start < period_end)
                .group_by(usage_aggregates.c.meter_id, day)):
            usage.setdefault(r.meter_id, {})[r.day] = Decimal(r.quantity)
    return SubscriptionDetail(periods, history, usage)


def parked_usage_page(engine: sa.Engine, *, after: int | None,
                      limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
    """Usage parked because its customer was unknown and not replayed yet, oldest first."""
    query = sa.select(unmatched_usage).where(unmatched_usage.c.replayed_at.is_(None))
    if after is not None:
        query = query.where(unmatched_usage.c.id > after)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query.order_by(unmatched_usage.c.id).limit(limit + 1))]
    page = rows[:limit]
    return page, page[-1]["id"] if len(rows) > limit and page else None


def recent_payments(engine: sa.Engine, customer_id: str, limit: int = 50) -> list[PaymentAttemptView]:
    """A customer's newest payment attempts first (the API's list pages them oldest first)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(payment_attempts).where(payment_attempts.c.customer_id == customer_id)
                            .order_by(payment_attempts.c.requested_at.desc(), payment_attempts.c.attempt_id.desc())
                            .limit(limit))
        return [PaymentAttemptView.model_validate(r._mapping) for r in rows]
