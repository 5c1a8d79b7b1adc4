"""Billing history reads from the worker's read model: subscriptions, invoices with lines, payments,
credit balances and the ledger, usage so far, and the edge's audit trail. Org-bound `read` keys see only their org."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.pagination import Page, decode_cursor, decode_int_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES, ProblemError
from services.ingest.routes.subscriptions import owner_of
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

router = APIRouter(tags=["reads"])
Limit = Query(50, ge=1, le=500)
LAST_SECOND = timedelta(seconds=1)  # rating draws credits at the last second of the period


def _not_found(what: str, ident: str) -> ProblemError:
    return ProblemError(404, f"Unknown {what}", f"no {what} {ident!r}", slug="not-found")


def _page(container: Container, query: sa.Select[Any], key: sa.ColumnElement[Any], cursor: str | None,
          limit: int) -> tuple[list[Any], str | None]:
    """Keyset pagination over `key` (unique, ascending)."""
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(key > after)
    with container.engine.connect() as conn:
        rows = list(conn.execute(query.order_by(key).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(str(rows[-1]._mapping[key])) if more and rows else None


async def _subscription_owner(container: Container, principal: Principal, subscription_id: str) -> str:
    owner = await run_in_threadpool(owner_of, container.engine, subscription_id)
    if owner is None:
        raise _not_found("subscription", subscription_id)
    authorize_customer(principal, owner)
    return owner


@router.get("/v1/customers/{customer_id}/subscriptions", response_model=Page[SubscriptionView],
            responses=PROBLEM_RESPONSES, summary="A customer's subscriptions")
async def customer_subscriptions(customer_id: PathId, limit: int = Limit, cursor: str | None = None,
                                 principal: Principal = Depends(require(Scope.READ)),
                                 container: Container = Depends(get_container)) -> Page[SubscriptionView]:
    authorize_customer(principal, customer_id)
    rows, nxt = await run_in_threadpool(_page, container, sa.select(subscriptions).where(
        subscriptions.c.customer_id == customer_id), subscriptions.c.subscription_id, cursor, limit)
    return Page(data=[SubscriptionView.model_validate(r._mapping) for r in rows], next_cursor=nxt)


@router.get("/v1/subscriptions/{subscription_id}", response_model=SubscriptionView, responses=PROBLEM_RESPONSES,
            summary="One subscription as the worker has it")
async def get_subscription(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                           container: Container = Depends(get_container)) -> SubscriptionView:
    await _subscription_owner(container, principal, subscription_id)

    def load() -> Any:
        with container.engine.connect() as conn:
            return conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == subscription_id)
                                ).one_or_none()

    row = await run_in_threadpool(load)
    if row is None:
        raise _not_found("subscription", subscription_id)
    return SubscriptionView.model_validate(row._mapping)


def _with_lines(conn: sa.Connection, rows: list[Any]) -> list[InvoiceView]:
    ids = [r.invoice_id for r in rows]
    lines: dict[str, list[InvoiceLineView]] = {i: [] for i in ids}
    if ids:
        for line in conn.execute(sa.select(invoice_lines).where(invoice_lines.c.invoice_id.in_(ids))
                                 .order_by(invoice_lines.c.invoice_id, invoice_lines.c.line_no)):
            lines[line.invoice_id].append(InvoiceLineView.model_validate(line._mapping))
    return [InvoiceView.model_validate({**r._mapping, "lines": lines[r.invoice_id]}) for r in rows]


@router.get("/v1/customers/{customer_id}/invoices", response_model=Page[InvoiceView], responses=PROBLEM_RESPONSES,
            summary="A customer's invoices, with lines")
async def customer_invoices(customer_id: PathId, limit: int = Limit, cursor: str | None = None,
                            principal: Principal = Depends(require(Scope.READ)),
                            container: Container = Depends(get_container)) -> Page[InvoiceView]:
    authorize_customer(principal, customer_id)

    def load() -> tuple[list[InvoiceView], str | None]:
        rows, nxt = _page(container, sa.select(invoices).where(invoices.c.customer_id == customer_id),
                          invoices.c.invoice_id, cursor, limit)
        with container.engine.connect() as conn:
            return _with_lines(conn, rows), nxt

    views, nxt = await run_in_threadpool(load)
    return Page(data=views, next_cursor=nxt)


@router.get("/v1/invoices/{invoice_id}", response_model=InvoiceView, responses=PROBLEM_RESPONSES,
            summary="One invoice with its lines")
async def get_invoice(invoice_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                      container: Container = Depends(get_container)) -> InvoiceView:
    def load() -> InvoiceView | None:
        with container.engine.connect() as conn:
            row = conn.execute(sa.select(invoices).where(invoices.c.invoice_id == invoice_id)).one_or_none()
            return _with_lines(conn, [row])[0] if row is not None else None

    view = await run_in_threadpool(load)
    if view is None:
        raise _not_found("invoice", invoice_id)
    authorize_customer(principal, view.customer_id)
    return view


@router.get("/v1/customers/{customer_id}/payments", response_model=Page[PaymentAttemptView],
            responses=PROBLEM_RESPONSES, summary="Payment attempts of a customer's invoices")
async def customer_payments(customer_id: PathId, limit: int = Limit, cursor: str | None = None,
                            principal: Principal = Depends(require(Scope.READ)),
                            container: Container = Depends(get_container)) -> Page[PaymentAttemptView]:
    authorize_customer(principal, customer_id)
    rows, nxt = await run_in_threadpool(_page, container, sa.select(payment_attempts).where(
        payment_attempts.c.customer_id == customer_id), payment_attempts.c.attempt_id, cursor, limit)
    return Page(data=[PaymentAttemptView.model_validate(r._mapping) for r in rows], next_cursor=nxt)


def _credit_view(g: GrantBalance) -> CreditBalanceView:
    return CreditBalanceView(grant_id=g.grant_id, meter_id=g.meter_id, source=g.source, currency=g.currency,
                             granted_minor=g.granted_minor, remaining_minor=g.remaining_minor,
                             granted_units=g.granted_units, remaining_units=g.remaining_units,
                             effective_at=g.effective_at, expires_at=g.expires_at)


@router.get("/v1/subscriptions/{subscription_id}/credits", response_model=list[CreditBalanceView],
            responses=PROBLEM_RESPONSES, summary="Credit grants and their remaining balances")
async def credit_balances(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                          container: Container = Depends(get_container)) -> list[CreditBalanceView]:
    await _subscription_owner(container, principal, subscription_id)

    def load() -> list[GrantBalance]:
        with container.engine.connect() as conn:
            return grant_balances(conn, subscription_id)

    return [_credit_view(g) for g in await run_in_threadpool(load)]


@router.get("/v1/subscriptions/{subscription_id}/usage", response_model=UsageSoFarView,
            responses=PROBLEM_RESPONSES, summary="Usage so far in the current period, credits left, charge")
async def usage_so_far(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                       container: Container = Depends(get_container)) -> UsageSoFarView:
    """Usage per meter since the current period started (as materialised by the worker), the credits the
    period close will draw from (grants usable at the period's last second), and the resulting charge."""
    await _subscription_owner(container, principal, subscription_id)
    now = await run_in_threadpool(container.clock.now)

    def load() -> tuple[Any, PeriodUsage, list[GrantBalance]]:
        with container.engine.connect() as conn:
            sub = conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == subscription_id)
                               ).one()
            usage = usage_since(conn, subscription_id, sub.current_period_start)
            grants = grant_balances(conn, subscription_id, usable_at=sub.current_period_end - LAST_SECOND)
        return sub, usage, grants

    sub, usage, grants = await run_in_threadpool(load)
    plan = container.catalog.plans.get(sub.plan_id)
    if plan is None:
        raise ProblemError(409, "Plan not in the catalog", f"plan {sub.plan_id!r} is unknown to this edge",
                           slug="unknown-plan")
    money_left: dict[str, int] = {}
    units_left: dict[str, Decimal] = {}
    for g in grants:
        if g.remaining_minor is not None and g.currency == plan.currency:
            money_left[g.meter_id] = money_left.get(g.meter_id, 0) + g.remaining_minor
        elif g.remaining_units is not None:
            units_left[g.meter_id] = units_left.get(g.meter_id, Decimal(0)) + g.remaining_units
    estimates = estimate_usage(plan, usage.totals, money_left, units_left)
    meters = []
    for e in estimates:
        pricing = plan.pricing_for(e.meter_id)
        meter = container.catalog.meters.get(e.meter_id)  # type: ignore[call-overload]
        meters.append(MeterUsageView(
            meter_id=e.meter_id, unit=meter.unit if meter is not None else None, quantity=e.quantity,
            late_quantity=usage.pending_late.get(e.meter_id, Decimal(0)), treatment=e.treatment.value,
            unit_price=pricing.unit_price.amount if pricing is not None and pricing.unit_price else None,
            gross_minor=e.gross.amount_minor if e.gross is not None else None,
            credit_remaining_minor=money_left.get(e.meter_id), credit_remaining_units=units_left.get(e.meter_id),
            credit_applied_minor=e.credit_applied.amount_minor if e.credit_applied is not None else None,
            credit_applied_units=e.credit_units_applied if e.credit_units_applied else None,
            billable_quantity=e.billable_quantity, estimated_charge_minor=e.charge.amount_minor))
    return UsageSoFarView(
        subscription_id=subscription_id, customer_id=sub.customer_id, plan_id=sub.plan_id, status=sub.status,
        currency=plan.currency, period_start=sub.current_period_start, period_end=sub.current_period_end,
        as_of=now, meters=meters, estimated_usage_charge_minor=sum(e.charge.amount_minor for e in estimates),
        credits=[_credit_view(g) for g in grants])


@router.get("/v1/subscriptions/{subscription_id}/ledger", response_model=Page[LedgerEntryView],
            responses=PROBLEM_RESPONSES, summary="The credit ledger (append-only entries)")
async def ledger(subscription_id: PathId, limit: int = Limit, cursor: str | None = None,
                 principal: Principal = Depends(require(Scope.READ)),
                 container: Container = Depends(get_container)) -> Page[LedgerEntryView]:
    await _subscription_owner(container, principal, subscription_id)
    rows, nxt = await run_in_threadpool(_page, container, sa.select(credit_entries).where(
        credit_entries.c.subscription_id == subscription_id), credit_entries.c.entry_id, cursor, limit)
    return Page(data=[LedgerEntryView.model_validate(r._mapping) for r in rows], next_cursor=nxt)


@router.get("/v1/customers/{customer_id}/audit", response_model=Page[AuditEntryView], responses=PROBLEM_RESPONSES,
            summary="Audit trail: who did what, when, with which key")
async def audit_trail(customer_id: PathId, limit: int = Limit, cursor: str | None = None,
                      principal: Principal = Depends(require(Scope.READ)),
                      container: Container = Depends(get_container)) -> Page[AuditEntryView]:
    authorize_customer(principal, customer_id)
    after = decode_int_cursor(cursor)

    def load() -> list[Any]:
        query = sa.select(audit_log).where(audit_log.c.customer_id == customer_id)
        if after is not None:
            query = query.where(audit_log.c.id > after)
        with container.engine.connect() as conn:
            return list(conn.execute(query.order_by(audit_log.c.id).limit(limit + 1)))

    rows = await run_in_threadpool(load)
    views = [AuditEntryView.model_validate(r._mapping) for r in rows[:limit]]
    return Page(data=views, next_cursor=encode_cursor(str(views[-1].id)) if len(rows) > limit else None)
