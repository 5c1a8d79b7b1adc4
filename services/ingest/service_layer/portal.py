"""The customer usage portal: signed links (`POST /v1/customers/{id}/portal-links`) and what the read-only
page a link opens shows (`GET /portal/{token}`).

A link is a token of `shared.domain.portal_link` signed with `Settings.portal_secret`: the page, and every
document it links to, trusts nothing but the token. Everything here is read for the token's customer
alone: an invoice of another customer is "no such invoice" for the link (the same answer as an unknown id,
so a link cannot probe which ids exist).

The page shows, per live subscription: usage by meter in the current period (the "usage so far" read the
API serves, `views.usage_so_far`) with a daily series per meter from the worker's hourly aggregates, the
included credits left; for a usage tier, the spend against the cap (the spend gate's own balance); for a
report-credit org, the month's reports used per user; and the customer's final invoices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from services.ingest.audit import record
from services.ingest.auth import Principal
from services.ingest.service_layer import views
from services.ingest.service_layer.quota_errors import QuotaRefused
from services.ingest.service_layer.spend import OrgSpend, SpendService
from services.ingest.views import UsageSoFarView
from shared.adapters.documents import InvoiceDocument, load_invoice_document
from shared.adapters.postgres.schema.billing import invoices, subscriptions
from shared.adapters.postgres.schema.core import customers
from shared.adapters.postgres.schema.quota import quota_org_months, quota_orgs, quota_user_months
from shared.adapters.postgres.schema.usage import usage_aggregates
from shared.domain import portal_link
from shared.domain.catalog import Catalog, PlanId
from shared.domain.portal_link import PortalGrant

INVOICES_SHOWN = 24
USERS_SHOWN = 50


@dataclass(frozen=True)
class PortalLink:
    customer_id: str
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class DailyUsage:
    """One meter's usage per UTC day of the period so far (every day present, zero when none)."""

    meter_id: str
    days: list[date]
    quantities: list[Decimal]


@dataclass(frozen=True)
class PortalSubscription:
    usage: UsageSoFarView
    daily: list[DailyUsage]
    seats: int


@dataclass(frozen=True)
class ReportUser:
    user_id: str
    used: int
    limit: int | None


@dataclass(frozen=True)
class ReportCredits:
    """The month's report credits of a report-plan (or trial) org: the org's count and each user's."""

    month_start: datetime
    month_end: datetime
    allotment: int | None
    used: int
    users: list[ReportUser]


@dataclass(frozen=True)
class PortalInvoice:
    invoice_id: str
    number: str | None
    status: str
    period_start: datetime
    period_end: datetime
    currency: str
    total_minor: int
    amount_due_minor: int
    issued_at: datetime | None


@dataclass(frozen=True)
class PortalCustomer:
    customer_id: str
    name: str
    kind: str
    currency: str


@dataclass(frozen=True)
class PortalPage:
    customer: PortalCustomer
    as_of: datetime
    expires_at: datetime
    subscriptions: list[PortalSubscription]
    spend: OrgSpend | None
    reports: ReportCredits | None
    invoices: list[PortalInvoice]


# --- links ------------------------------------------------------------------------------------------------


def issue_link(engine: sa.Engine, principal: Principal, customer_id: str, lifetime: timedelta, secret: bytes,
               now: datetime, request_id: str | None = None) -> PortalLink | None:
    """A link to `customer_id`'s page valid for `lifetime` from `now` (bounds: `portal_link`), recorded in
    the audit trail (who handed out a view of this customer, until when); None for an unknown customer."""
    expires_at = portal_link.link_expiry(now, lifetime)
    link = PortalLink(customer_id, portal_link.sign(customer_id, expires_at, secret), expires_at)
    with engine.begin() as conn:
        if conn.execute(sa.select(customers.c.customer_id)
                        .where(customers.c.customer_id == customer_id)).first() is None:
            return None
        record(conn, principal, "customer.portal_link", customer_id=customer_id, request_id=request_id,
               expires_at=expires_at.isoformat())
    return link


def open_link(token: str, secret: bytes, now: datetime) -> PortalGrant:
    """What `token` grants now; `PortalLinkInvalid` / `PortalLinkExpired` otherwise."""
    return portal_link.verify(token, secret, now)


# --- the page ---------------------------------------------------------------------------------------------


def _daily(conn: sa.Connection, subscription_id: str, start: datetime, end: datetime,
           now: datetime) -> list[DailyUsage]:
    """Per meter, the usage of each UTC day from the period start to today (or the period end)."""
    agg = usage_aggregates.c
    day = sa.func.date_trunc("day", sa.func.timezone("UTC", agg.bucket_start)).label("day")
    rows = conn.execute(
        sa.select(agg.meter_id, day, sa.func.sum(agg.quantity))
        .where(agg.subscription_id == subscription_id, agg.bucket_start >= start, agg.bucket_start < end)
        .group_by(agg.meter_id, day)).all()
    first = start.astimezone(UTC).date()
    last = (min(now, end) - timedelta(microseconds=1)).astimezone(UTC).date()
    days = [first + timedelta(days=i) for i in range(max((last - first).days + 1, 1))]
    by_meter: dict[str, dict[date, Decimal]] = {}
    for meter_id, at, quantity in rows:
        by_meter.setdefault(meter_id, {})[at.date()] = Decimal(quantity)
    return [DailyUsage(meter_id, days, [series.get(d, Decimal(0)) for d in days])
            for meter_id, series in sorted(by_meter.items())]


def _reports(conn: sa.Connection, customer_id: str, now: datetime) -> ReportCredits | None:
    org = conn.execute(sa.select(quota_orgs.c.per_user_monthly_limit)
                       .where(quota_orgs.c.org_id == customer_id)).one_or_none()
    if org is None:
        return None
    m = quota_org_months.c
    month = conn.execute(sa.select(m.month_start, m.month_end, m.plan_monthly_reports, m.top_ups, m.used)
                         .where(m.org_id == customer_id, m.month_start <= now)
                         .order_by(m.month_start.desc()).limit(1)).one_or_none()
    if month is None:
        return None
    u = quota_user_months.c
    users = [ReportUser(user_id, used, limit if limit is not None else org.per_user_monthly_limit)
             for user_id, used, limit in conn.execute(
                 sa.select(u.user_id, u.used, u.limit_at_last_use)
                 .where(u.org_id == customer_id, u.month_start == month.month_start)
                 .order_by(u.used.desc(), u.user_id).limit(USERS_SHOWN))]
    allotment = (month.plan_monthly_reports + month.top_ups) if month.plan_monthly_reports is not None else None
    return ReportCredits(month.month_start, month.month_end, allotment, month.used, users)


def _invoices(conn: sa.Connection, customer_id: str) -> list[PortalInvoice]:
    i = invoices.c
    rows = conn.execute(
        sa.select(i.invoice_id, i.number, i.status, i.period_start, i.period_end, i.currency, i.total_minor,
                  i.amount_due_minor, i.issued_at)
        .where(i.customer_id == customer_id, i.status != "draft")
        .order_by(i.number_seq.desc().nulls_last(), i.invoice_id).limit(INVOICES_SHOWN)).all()
    return [PortalInvoice(**r._mapping) for r in rows]


def load_page(engine: sa.Engine, grant: PortalGrant, now: datetime,
              catalog_for: Callable[[str], Catalog]) -> PortalPage | None:
    """Everything the page shows but the spend (read by `spend_of`), in one connection; None when the
    customer is gone."""
    customer_id = grant.customer_id
    shown: list[PortalSubscription] = []
    with engine.connect() as conn:
        row = conn.execute(sa.select(customers.c.customer_id, customers.c.name, customers.c.kind,
                                     customers.c.currency)
                           .where(customers.c.customer_id == customer_id)).one_or_none()
        if row is None:
            return None
        subs = conn.execute(sa.select(subscriptions.c.subscription_id, subscriptions.c.seats)
                            .where(subscriptions.c.customer_id == customer_id,
                                   subscriptions.c.status != "cancelled")
                            .order_by(subscriptions.c.subscription_id)).all()
        for subscription_id, seats in subs:
            reading = views.read_period(conn, subscription_id)
            catalog = catalog_for(reading.plan_id)
            plan = catalog.plans.get(PlanId(reading.plan_id))
            if plan is None:
                continue  # a plan this edge does not know yet: nothing to price the usage with
            daily = _daily(conn, subscription_id, reading.period_start, reading.period_end, now)
            shown.append(PortalSubscription(views.usage_so_far(reading, plan, catalog.meters, now), daily, seats))
        reports = _reports(conn, customer_id, now)
        invoice_rows = _invoices(conn, customer_id)
    return PortalPage(customer=PortalCustomer(**row._mapping), as_of=now, expires_at=grant.expires_at,
                      subscriptions=shown, spend=None, reports=reports, invoices=invoice_rows)


async def spend_of(spend: SpendService | None, customer_id: str) -> OrgSpend | None:
    """The usage tier's spend against the cap, or None when the customer has none."""
    if spend is None:
        return None
    try:
        return await spend.balance(customer_id)
    except QuotaRefused:  # no live subscription, or a plan without the spend meter
        return None


def invoice_document_for(engine: sa.Engine, grant: PortalGrant, invoice_id: str,
                         issuer_name: str) -> InvoiceDocument | None:
    """The document of one of the grant's customer's final invoices; None for anything else (unknown,
    another customer's, a draft): the link cannot tell them apart."""
    with engine.connect() as conn:
        document = load_invoice_document(conn, invoice_id, issuer_name=issuer_name)
    if document is None or document.customer_id != grant.customer_id or not document.is_final:
        return None
    return document


def with_spend(page: PortalPage, spend: OrgSpend | None) -> PortalPage:
    return replace(page, spend=spend)

