"""The operator console's read side: the aggregates and lists its pages show, queried from the worker's read
model and the edge's tables (like `views.py`: no domain object, no unit of work, reads change nothing).

Each page costs one connection and a few set-based queries (no query per row): totals are summed by
PostgreSQL (`GROUP BY`), lists are keyset pages. Amounts stay integers of minor units per currency; months
and days are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import invoices
from shared.adapters.postgres.schema.core import customer_aliases, customers
from shared.adapters.postgres.schema.edge import api_keys
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
    usage_days: list[tuple[date, int]]  # events per UTC day, the last USAGE_DAYS days, gaps as 0
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


def overview(engine: sa.Engine, today: date) -> Overview:
    """Revenue invoiced / collected / written off by month and currency, open and uncollectible totals,
    usage events per day: three grouped queries in one connection."""
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
    start = datetime.combine(today - timedelta(days=USAGE_DAYS - 1), time.min, tzinfo=UTC)
    day = sa.func.date(sa.func.timezone("UTC", usage_aggregates.c.bucket_start))
    usage = (sa.select(day.label("day"), sa.func.sum(usage_aggregates.c.event_count).label("events"))
             .where(usage_aggregates.c.bucket_start >= start)
             .group_by(day))
    with engine.connect() as conn:
        rev_rows = list(conn.execute(revenue))
        owed_rows = list(conn.execute(owed))
        usage_rows = {r.day: int(r.events) for r in conn.execute(usage)}
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
    days = [today - timedelta(days=USAGE_DAYS - 1 - i) for i in range(USAGE_DAYS)]
    return Overview(result, [(d, usage_rows.get(d, 0)) for d in days], customer_count)


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
