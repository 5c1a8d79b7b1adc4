"""Billing history reads from the worker's read model: subscriptions, invoices with lines, payments,
credit balances and the ledger, usage so far, and the edge's audit trail. Org-bound `read` keys see only their org.
The queries are the edge's read side (`services.ingest.service_layer.views`); routes authorise, page and encode."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import PathId
from services.ingest.pagination import Page, decode_cursor, decode_int_cursor, encode_cursor
from services.ingest.problems import PROBLEM_RESPONSES, ProblemError
from services.ingest.routes.subscriptions import owner_of
from services.ingest.service_layer import views
from services.ingest.views import (
    AuditEntryView,
    CreditBalanceView,
    InvoiceView,
    LedgerEntryView,
    PaymentAttemptView,
    SubscriptionView,
    UsageSoFarView,
)
from shared.domain.catalog import PlanId

router = APIRouter(tags=["reads"])
Limit = Query(50, ge=1, le=500)


def _not_found(what: str, ident: str) -> ProblemError:
    return ProblemError(404, f"Unknown {what}", f"no {what} {ident!r}", slug="not-found")


def _next(key: str | None) -> str | None:
    return encode_cursor(key) if key is not None else None


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
    data, nxt = await run_in_threadpool(views.subscriptions_of, container.engine, customer_id,
                                        decode_cursor(cursor), limit)
    return Page(data=data, next_cursor=_next(nxt))


@router.get("/v1/subscriptions/{subscription_id}", response_model=SubscriptionView, responses=PROBLEM_RESPONSES,
            summary="One subscription as the worker has it")
async def get_subscription(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                           container: Container = Depends(get_container)) -> SubscriptionView:
    await _subscription_owner(container, principal, subscription_id)
    view = await run_in_threadpool(views.subscription, container.engine, subscription_id)
    if view is None:
        raise _not_found("subscription", subscription_id)
    return view


@router.get("/v1/customers/{customer_id}/invoices", response_model=Page[InvoiceView], responses=PROBLEM_RESPONSES,
            summary="A customer's invoices, with lines")
async def customer_invoices(customer_id: PathId, limit: int = Limit, cursor: str | None = None,
                            principal: Principal = Depends(require(Scope.READ)),
                            container: Container = Depends(get_container)) -> Page[InvoiceView]:
    authorize_customer(principal, customer_id)
    data, nxt = await run_in_threadpool(views.invoices_of, container.engine, customer_id, decode_cursor(cursor),
                                        limit)
    return Page(data=data, next_cursor=_next(nxt))


@router.get("/v1/invoices/{invoice_id}", response_model=InvoiceView, responses=PROBLEM_RESPONSES,
            summary="One invoice with its lines")
async def get_invoice(invoice_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                      container: Container = Depends(get_container)) -> InvoiceView:
    view = await run_in_threadpool(views.invoice, container.engine, invoice_id)
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
    data, nxt = await run_in_threadpool(views.payments_of, container.engine, customer_id, decode_cursor(cursor),
                                        limit)
    return Page(data=data, next_cursor=_next(nxt))


@router.get("/v1/subscriptions/{subscription_id}/credits", response_model=list[CreditBalanceView],
            responses=PROBLEM_RESPONSES, summary="Credit grants and their remaining balances")
async def credit_balances(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                          container: Container = Depends(get_container)) -> list[CreditBalanceView]:
    await _subscription_owner(container, principal, subscription_id)
    return await run_in_threadpool(views.credit_balances, container.engine, subscription_id)


@router.get("/v1/subscriptions/{subscription_id}/usage", response_model=UsageSoFarView,
            responses=PROBLEM_RESPONSES, summary="Usage so far in the current period, credits left, charge")
async def usage_so_far(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                       container: Container = Depends(get_container)) -> UsageSoFarView:
    """Usage per meter since the current period started (as materialised by the worker), the credits the
    period close will draw from (grants usable at the period's last second), and the resulting charge."""
    await _subscription_owner(container, principal, subscription_id)
    now = await run_in_threadpool(container.clock.now)
    reading = await run_in_threadpool(views.period_reading, container.engine, subscription_id)
    catalog = await run_in_threadpool(container.current_catalog, reading.plan_id)
    plan = catalog.plans.get(PlanId(reading.plan_id))
    if plan is None:
        raise ProblemError(409, "Plan not in the catalog", f"plan {reading.plan_id!r} is unknown to this edge",
                           slug="unknown-plan")
    return views.usage_so_far(reading, plan, catalog.meters, now)


@router.get("/v1/subscriptions/{subscription_id}/ledger", response_model=Page[LedgerEntryView],
            responses=PROBLEM_RESPONSES, summary="The credit ledger (append-only entries)")
async def ledger(subscription_id: PathId, limit: int = Limit, cursor: str | None = None,
                 principal: Principal = Depends(require(Scope.READ)),
                 container: Container = Depends(get_container)) -> Page[LedgerEntryView]:
    await _subscription_owner(container, principal, subscription_id)
    data, nxt = await run_in_threadpool(views.ledger_of, container.engine, subscription_id, decode_cursor(cursor),
                                        limit)
    return Page(data=data, next_cursor=_next(nxt))


@router.get("/v1/customers/{customer_id}/audit", response_model=Page[AuditEntryView], responses=PROBLEM_RESPONSES,
            summary="Audit trail: who did what, when, with which key")
async def audit_trail(customer_id: PathId, limit: int = Limit, cursor: str | None = None,
                      principal: Principal = Depends(require(Scope.READ)),
                      container: Container = Depends(get_container)) -> Page[AuditEntryView]:
    authorize_customer(principal, customer_id)
    data, nxt = await run_in_threadpool(views.audit_of, container.engine, customer_id, decode_int_cursor(cursor),
                                        limit)
    return Page(data=data, next_cursor=_next(nxt))
