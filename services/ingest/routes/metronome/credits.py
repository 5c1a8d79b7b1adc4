"""Metronome's credit grants (createGrant, listGrants, listEntries, voidGrant) and contract balances
(customerBalances list and getNetBalance) over our credit ledger. Decode, call
`services.ingest.service_layer.metronome_credits`, wait for the worker where a command was sent, answer
Metronome's shape (`services.ingest.metronome.credit_shapes`)."""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, forbidden, require
from services.ingest.container import Container, get_container
from services.ingest.metronome import pages
from services.ingest.metronome.credit_shapes import (
    Entry,
    GrantFacts,
    balance_json,
    customer_ledger,
    grant_json,
)
from services.ingest.metronome.customers import not_supported
from services.ingest.metronome.pricing_shapes import USD_CREDIT_TYPE
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.routes.metronome.pricing import IdData, MetronomeBody
from services.ingest.routes.subscriptions import unit_of_work, worker_outcome
from services.ingest.service_layer import metronome_credits as use_cases
from services.ingest.service_layer import metronome_pricing
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory

router = APIRouter(tags=["metronome"])


class Amount(BaseModel):
    amount: Decimal = Field(allow_inf_nan=False)
    credit_type_id: str = Field(min_length=1, max_length=200)


class CreateGrant(MetronomeBody):
    customer_id: str = Field(min_length=1, max_length=200)
    expires_at: AwareDatetime
    grant_amount: Amount
    name: str = Field(min_length=1, max_length=200)
    paid_amount: Amount
    priority: Decimal = Field(allow_inf_nan=False)
    credit_grant_type: str | None = Field(default=None, max_length=200)
    custom_fields: dict[str, str] | None = None
    effective_at: AwareDatetime | None = None
    invoice_date: AwareDatetime | None = None
    product_ids: list[str] | None = Field(default=None, max_length=50)
    reason: str | None = Field(default=None, max_length=1000)
    rollover_settings: dict[str, Any] | None = None
    uniqueness_key: str | None = Field(default=None, min_length=1, max_length=128)


class ListGrants(MetronomeBody):
    credit_grant_ids: list[str] | None = Field(default=None, max_length=100)
    customer_ids: list[str] | None = Field(default=None, max_length=100)
    credit_type_ids: list[str] | None = Field(default=None, max_length=10)


class ListEntries(MetronomeBody):
    customer_ids: list[str] | None = Field(default=None, max_length=100)
    credit_type_ids: list[str] | None = Field(default=None, max_length=10)
    starting_on: AwareDatetime | None = None
    ending_before: AwareDatetime | None = None
    sort: Literal["asc", "desc"] | None = None


class VoidGrant(MetronomeBody):
    id: str = Field(min_length=1, max_length=200)
    release_uniqueness_key: bool | None = None
    void_credit_purchase_invoice: bool | None = None


class Balances(MetronomeBody):
    customer_id: str = Field(min_length=1, max_length=200)
    id: str | None = Field(default=None, max_length=200)
    include_balance: bool | None = None
    include_ledgers: bool | None = None
    include_archived: bool | None = None
    include_contract_balances: bool | None = None
    exclude_zero_balances: bool | None = None
    access_type: Literal["SPEND", "QUANTITY"] | None = None
    limit: int | None = None
    next_page: str | None = None


class NetBalance(MetronomeBody):
    customer_id: str = Field(min_length=1, max_length=200)
    credit_type_id: str | None = None
    access_type: Literal["SPEND", "QUANTITY"] | None = None


def _facts(grant: use_cases.Grant) -> GrantFacts:
    return GrantFacts(grant.grant_id, grant.customer_id, grant.name or grant.source, grant.amount_cents,
                      0 if grant.voided else grant.remaining_cents, grant.priority, grant.effective_at,
                      grant.expires_at, [Entry(grant.grant_id, e.kind, e.amount_cents, e.at, e.invoice_id)
                                         for e in grant.entries],
                      grant.product_id, grant.reason, grant.credit_grant_type, grant.custom_fields,
                      grant.uniqueness_key, grant.contract_id, grant.applicable_product_id)


def _product_names(container: Container) -> dict[str, str]:
    with container.engine.connect() as conn:
        return {p.product_id: p.name for p in metronome_pricing.products_by_id(conn).values()}


def _refuse_credit_types(credit_type_ids: list[str] | None, field: str) -> None:
    if credit_type_ids and set(credit_type_ids) != {USD_CREDIT_TYPE["id"]}:
        raise not_supported(field, "credit types other than USD (cents)")


@router.post("/v1/credits/createGrant", response_model=IdData, responses=PROBLEM_RESPONSES,
             summary="Metronome: grant credit on the customer's live contract (one usage product, USD cents)")
async def create_grant(body: CreateGrant, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container),
                       uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    body.refuse_unknown()
    for key in ("rollover_settings", "invoice_date"):
        if getattr(body, key) is not None:
            raise not_supported(key, key)
    authorize_customer(principal, body.customer_id)
    now = await run_in_threadpool(container.clock.now)
    grant = use_cases.GrantRequest(
        customer_id=body.customer_id, name=body.name, amount=body.grant_amount.amount,
        credit_type_id=body.grant_amount.credit_type_id, paid_amount=body.paid_amount.amount,
        priority=body.priority, expires_at=body.expires_at, effective_at=body.effective_at,
        product_ids=body.product_ids or [], reason=body.reason, credit_grant_type=body.credit_grant_type,
        custom_fields=body.custom_fields, uniqueness_key=body.uniqueness_key)
    grant_id, accepted = await run_in_threadpool(partial(
        use_cases.create_grant, container.engine, container.current_catalog(), grant, principal=principal,
        authorize=partial(authorize_customer, principal), now=now, request_id=request.headers.get("x-request-id")))
    await worker_outcome(container, uow, accepted)
    return {"data": {"id": grant_id}}


@router.post("/v1/credits/listGrants", responses=PROBLEM_RESPONSES, summary="Metronome: credit grants, a page")
async def list_grants(body: ListGrants | None = None, limit: int | None = None, next_page: str | None = None,
                      principal: Principal = Depends(require(Scope.READ)),
                      container: Container = Depends(get_container)) -> dict[str, Any]:
    body = body or ListGrants()
    body.refuse_unknown()
    _refuse_credit_types(body.credit_type_ids, "credit_type_ids")
    for customer_id in body.customer_ids or ():
        authorize_customer(principal, customer_id)
    if not body.customer_ids and not principal.has_any(frozenset({Scope.ADMIN})):
        raise forbidden("a key bound to an organisation lists its own grants: name its customer_ids")
    size = pages.limit_of(limit)
    now = await run_in_threadpool(container.clock.now)
    found = await run_in_threadpool(use_cases.grants_page, container.engine, body.customer_ids,
                                    body.credit_grant_ids, pages.after_of(next_page), size)
    names = await run_in_threadpool(_product_names, container)
    return pages.page(found, size, lambda g: g.grant_id, lambda g: grant_json(_facts(g), names, now))


@router.post("/v1/credits/listEntries", responses=PROBLEM_RESPONSES,
             summary="Metronome: the credit ledger of customers (one customer per page)")
async def list_entries(body: ListEntries, next_page: str | None = None,
                       principal: Principal = Depends(require(Scope.READ)),
                       container: Container = Depends(get_container)) -> dict[str, Any]:
    body.refuse_unknown()
    _refuse_credit_types(body.credit_type_ids, "credit_type_ids")
    if not body.customer_ids:
        raise not_supported("customer_ids", "the ledger of every customer at once")
    customer_ids = sorted(set(body.customer_ids))
    after = pages.after_of(next_page)
    remaining = [c for c in customer_ids if after is None or c > after]
    shown = remaining[:1]
    data = []
    for customer_id in shown:
        authorize_customer(principal, customer_id)
        grants = await run_in_threadpool(use_cases.ledger_of, container.engine, customer_id)
        data.append(customer_ledger(customer_id, [_facts(g) for g in grants], starting_on=body.starting_on,
                                    ending_before=body.ending_before, descending=body.sort == "desc"))
    more = len(remaining) > 1
    return {"data": data, "next_page": pages.page(shown + remaining[1:2], 1, lambda c: c, lambda c: c)["next_page"]
            if more else None}


@router.post("/v1/credits/voidGrant", response_model=IdData, responses=PROBLEM_RESPONSES,
             summary="Metronome: void a credit grant (what is left of it is written off)")
async def void_grant(body: VoidGrant, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                     container: Container = Depends(get_container),
                     uow: UnitOfWorkFactory = Depends(unit_of_work)) -> dict[str, Any]:
    body.refuse_unknown()
    if body.void_credit_purchase_invoice or body.release_uniqueness_key:
        raise not_supported("release_uniqueness_key" if body.release_uniqueness_key
                                              else "void_credit_purchase_invoice", "options of a void")
    now = await run_in_threadpool(container.clock.now)
    accepted = await run_in_threadpool(partial(
        use_cases.void_grant, container.engine, body.id, principal=principal,
        authorize=partial(authorize_customer, principal), now=now, request_id=request.headers.get("x-request-id")))
    await worker_outcome(container, uow, accepted)
    return {"data": {"id": body.id}}


@router.post("/v1/contracts/customerBalances/list", responses=PROBLEM_RESPONSES,
             summary="Metronome: a customer's credits usable now (contracts' recurring credits, grants), a page")
async def list_balances(body: Balances, principal: Principal = Depends(require(Scope.READ)),
                        container: Container = Depends(get_container)) -> dict[str, Any]:
    body.refuse_unknown()
    if body.access_type == "QUANTITY":
        raise not_supported("access_type", "QUANTITY balances (credits are USD cents)")
    authorize_customer(principal, body.customer_id)
    now = await run_in_threadpool(container.clock.now)
    found = await run_in_threadpool(use_cases.balances_of, container.engine, body.customer_id, now)
    if body.id is not None:
        found = [g for g in found if g.grant_id == body.id]
    if body.exclude_zero_balances:
        found = [g for g in found if not g.voided and g.remaining_cents > 0]
    size = pages.limit_of(body.limit)
    after = pages.after_of(body.next_page)
    if after is not None:
        ids = [g.grant_id for g in found]
        found = found[ids.index(after) + 1:] if after in ids else []
    names = await run_in_threadpool(_product_names, container)
    return pages.page(found, size, lambda g: g.grant_id, lambda g: balance_json(
        _facts(g), names, include_balance=bool(body.include_balance), include_ledgers=bool(body.include_ledgers)))


@router.post("/v1/contracts/customerBalances/getNetBalance", responses=PROBLEM_RESPONSES,
             summary="Metronome: what a customer's credits usable now add up to (USD cents)")
async def net_balance(body: NetBalance, principal: Principal = Depends(require(Scope.READ)),
                      container: Container = Depends(get_container)) -> dict[str, Any]:
    body.refuse_unknown()
    _refuse_credit_types([body.credit_type_id] if body.credit_type_id else None, "credit_type_id")
    authorize_customer(principal, body.customer_id)
    now = await run_in_threadpool(container.clock.now)
    found = await run_in_threadpool(use_cases.balances_of, container.engine, body.customer_id, now)
    total = sum(0 if g.voided else g.remaining_cents for g in found)
    return {"data": {"balance": total, "credit_type_id": USD_CREDIT_TYPE["id"]}}
