"""Billing history reads from the worker's read model: subscriptions, invoices with lines, payments,
credit balances and the ledger, and the edge's audit trail. Org-bound `read` keys see only their org."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.pagination import Page, decode_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES, ProblemError
from services.ingest.routes.subscriptions import owner_of
from services.ingest.views import (
    AuditEntryView,
    CreditBalanceView,
    InvoiceLineView,
    InvoiceView,
    LedgerEntryView,
    PaymentAttemptView,
    SubscriptionView,
)
from shared.adapters.postgres.schema.billing import (
    credit_entries,
    credit_grants,
    invoice_lines,
    invoices,
    payment_attempts,
    subscriptions,
)
from shared.adapters.postgres.schema.edge import audit_log

router = APIRouter(tags=["reads"])
Limit = Query(50, ge=1, le=500)


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
async def customer_subscriptions(customer_id: str, limit: int = Limit, cursor: str | None = None,
                                 principal: Principal = Depends(require(Scope.READ)),
                                 container: Container = Depends(get_container)) -> Page[SubscriptionView]:
    authorize_customer(principal, customer_id)
    rows, nxt = await run_in_threadpool(_page, container, sa.select(subscriptions).where(
        subscriptions.c.customer_id == customer_id), subscriptions.c.subscription_id, cursor, limit)
    return Page(data=[SubscriptionView.model_validate(r._mapping) for r in rows], next_cursor=nxt)


@router.get("/v1/subscriptions/{subscription_id}", response_model=SubscriptionView, responses=PROBLEM_RESPONSES,
            summary="One subscription as the worker has it")
async def get_subscription(subscription_id: str, principal: Principal = Depends(require(Scope.READ)),
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
async def customer_invoices(customer_id: str, limit: int = Limit, cursor: str | None = None,
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
async def get_invoice(invoice_id: str, principal: Principal = Depends(require(Scope.READ)),
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
async def customer_payments(customer_id: str, limit: int = Limit, cursor: str | None = None,
                            principal: Principal = Depends(require(Scope.READ)),
                            container: Container = Depends(get_container)) -> Page[PaymentAttemptView]:
    authorize_customer(principal, customer_id)
    rows, nxt = await run_in_threadpool(_page, container, sa.select(payment_attempts).where(
        payment_attempts.c.customer_id == customer_id), payment_attempts.c.attempt_id, cursor, limit)
    return Page(data=[PaymentAttemptView.model_validate(r._mapping) for r in rows], next_cursor=nxt)


@router.get("/v1/subscriptions/{subscription_id}/credits", response_model=list[CreditBalanceView],
            responses=PROBLEM_RESPONSES, summary="Credit grants and their remaining balances")
async def credit_balances(subscription_id: str, principal: Principal = Depends(require(Scope.READ)),
                          container: Container = Depends(get_container)) -> list[CreditBalanceView]:
    await _subscription_owner(container, principal, subscription_id)

    def load() -> list[CreditBalanceView]:
        money = sa.func.coalesce(sa.func.sum(credit_entries.c.amount_minor), 0)
        units = sa.func.coalesce(sa.func.sum(credit_entries.c.units), 0)
        query = (sa.select(credit_grants, money.label("balance_minor"), units.label("balance_units"))
                 .outerjoin(credit_entries, credit_entries.c.grant_id == credit_grants.c.grant_id)
                 .where(credit_grants.c.subscription_id == subscription_id)
                 .group_by(*credit_grants.c).order_by(credit_grants.c.effective_at, credit_grants.c.grant_id))
        with container.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [CreditBalanceView(
            grant_id=r.grant_id, meter_id=r.meter_id, source=r.source, currency=r.currency,
            granted_minor=r.amount_minor, remaining_minor=int(r.balance_minor) if r.amount_minor is not None else None,
            granted_units=r.units, remaining_units=Decimal(r.balance_units) if r.units is not None else None,
            effective_at=r.effective_at, expires_at=r.expires_at) for r in rows]

    return await run_in_threadpool(load)


@router.get("/v1/subscriptions/{subscription_id}/ledger", response_model=Page[LedgerEntryView],
            responses=PROBLEM_RESPONSES, summary="The credit ledger (append-only entries)")
async def ledger(subscription_id: str, limit: int = Limit, cursor: str | None = None,
                 principal: Principal = Depends(require(Scope.READ)),
                 container: Container = Depends(get_container)) -> Page[LedgerEntryView]:
    await _subscription_owner(container, principal, subscription_id)
    rows, nxt = await run_in_threadpool(_page, container, sa.select(credit_entries).where(
        credit_entries.c.subscription_id == subscription_id), credit_entries.c.entry_id, cursor, limit)
    return Page(data=[LedgerEntryView.model_validate(r._mapping) for r in rows], next_cursor=nxt)


@router.get("/v1/customers/{customer_id}/audit", response_model=Page[AuditEntryView], responses=PROBLEM_RESPONSES,
            summary="Audit trail: who did what, when, with which key")
async def audit_trail(customer_id: str, limit: int = Limit, cursor: str | None = None,
                      principal: Principal = Depends(require(Scope.READ)),
                      container: Container = Depends(get_container)) -> Page[AuditEntryView]:
    authorize_customer(principal, customer_id)
    after = decode_cursor(cursor)
    if after is not None and not after.isdigit():
        raise ProblemError(422, "Invalid cursor", slug="cursor")

    def load() -> list[Any]:
        query = sa.select(audit_log).where(audit_log.c.customer_id == customer_id)
        if after is not None:
            query = query.where(audit_log.c.id > int(after))
        with container.engine.connect() as conn:
            return list(conn.execute(query.order_by(audit_log.c.id).limit(limit + 1)))

    rows = await run_in_threadpool(load)
    views = [AuditEntryView.model_validate(r._mapping) for r in rows[:limit]]
    return Page(data=views, next_cursor=encode_cursor(str(views[-1].id)) if len(rows) > limit else None)
