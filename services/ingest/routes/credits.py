"""Credits through the API (issue 15, item 3): grant, void, list grants, a customer's credits per meter.

A grant and a void are commands to the worker (the only writer of the credit ledger), answered like lifecycle
commands: 201/200 with the grant, 409 with the worker's refusal code, or 202 with a poll URL. These routes only
decode, call and encode; the use cases are `services.ingest.service_layer.credits`.
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import BodyId, PathId
from services.ingest.problems import PROBLEM_RESPONSES
from services.ingest.routes.subscriptions import COMMAND_RESPONSES, pending_answer, unit_of_work, worker_outcome
from services.ingest.service_layer import credits
from services.ingest.service_layer.credits import (
    AutoRechargeView,
    CreditGrantView,
    CreditPurchaseView,
    CustomerCreditsView,
)
from services.ingest.service_layer.lifecycle import Accepted
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory

router = APIRouter(tags=["credits"])
GRANT_RESPONSES: dict[int | str, dict[str, Any]] = COMMAND_RESPONSES | {
    404: COMMAND_RESPONSES[404] | {"description": "Unknown subscription or credit grant"},
    422: PROBLEM_RESPONSES[422]}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES, 404: PROBLEM_RESPONSES[409] | {"description": "Unknown customer or subscription"}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GrantRequest(_Body):
    meter_id: BodyId
    amount_minor: int | None = Field(default=None, ge=1, le=10**15, description="money meters (minor units)")
    units: Decimal | None = Field(default=None, gt=0, le=10**15, allow_inf_nan=False, description="unit meters")
    source: Literal["promotional", "top_up"] = "promotional"
    priority: int | None = Field(default=None, ge=0, le=1_000_000,
                                 description="lower is consumed first; null: the source's (promotional 20, top_up 50)")
    effective_at: AwareDatetime | None = Field(default=None, description="null: now")
    expires_at: AwareDatetime | None = Field(default=None, description="null: never (a top_up: the month's end)")
    description: str | None = Field(default=None, max_length=500)


class PurchaseRequest(_Body):
    meter_id: BodyId
    amount_minor: int = Field(ge=1, le=10**12, description="credit bought (minor units of the meter's currency)")
    price_minor: int | None = Field(default=None, ge=1, le=10**12, description="what is charged; null: the amount")
    expires_at: AwareDatetime | None = Field(default=None, description="null: a year after it is paid")


class AutoRechargeRequest(_Body):
    meter_id: BodyId
    threshold_minor: int = Field(ge=0, le=10**12, description="recharge when the credit left falls below this")
    target_minor: int = Field(ge=1, le=10**12, description="buy up to this (target - remaining); above the threshold")
    enabled: bool = True


class VoidRequest(_Body):
    reason: str | None = Field(default=None, max_length=500)


def _grant_view(container: Container, subscription_id: str, grant_id: str) -> CreditGrantView | None:
    found = [g for g in credits.grants_of(container.engine, subscription_id, lambda _owner: None)
             if g.grant_id == grant_id]
    return found[0] if found else None


async def _answer(container: Container, uow: UnitOfWorkFactory, accepted: Accepted, grant_id: str, *,
                  created: bool) -> JSONResponse:
    outcome = await worker_outcome(container, uow, accepted)
    if outcome is None:
        return pending_answer(accepted.command_id, accepted.subscription_id)
    view = await run_in_threadpool(_grant_view, container, accepted.subscription_id, grant_id)
    body = view.model_dump(mode="json") if view is not None else {"grant_id": grant_id}
    return JSONResponse(body, status_code=201 if created else 200,
                        headers={"Location": f"/v1/subscriptions/{accepted.subscription_id}/credit-grants",
                                 "X-Command-Id": str(accepted.command_id)})


@router.post("/v1/subscriptions/{subscription_id}/credit-grants", status_code=201, response_model=CreditGrantView,
             responses=GRANT_RESPONSES, summary="Grant promotional or paid credits on one meter",
             description="`amount_minor` for a money meter, `units` for a unit meter. A grant applies to one "
                         "meter. 422 `/problems/invalid-credit-grant` (code `invalid_credit_grant`) for an "
                         "unknown meter, the wrong kind of amount or `expires_at` not after `effective_at`. "
                         "Send an `Idempotency-Key`: the grant's id derives from it.")
async def grant(subscription_id: PathId, body: GrantRequest, request: Request,
                idempotency_key: str | None = Header(default=None, include_in_schema=False),
                principal: Principal = Depends(require(Scope.ADMIN)),
                container: Container = Depends(get_container),
                uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    now = await run_in_threadpool(container.clock.now)
    wanted = credits.GrantRequest(meter_id=body.meter_id, source=body.source, amount_minor=body.amount_minor,
                                  units=body.units, priority=body.priority, effective_at=body.effective_at,
                                  expires_at=body.expires_at, description=body.description)
    accepted, grant_id = await run_in_threadpool(partial(
        credits.grant, uow, container.current_catalog(), subscription_id, wanted, idempotency_key=idempotency_key,
        principal=principal, authorize=partial(authorize_customer, principal), now=now,
        request_id=request.headers.get("x-request-id")))
    return await _answer(container, uow, accepted, grant_id, created=True)


@router.post("/v1/credit-grants/{grant_id}/void", response_model=CreditGrantView, responses=GRANT_RESPONSES,
             summary="Void a credit grant: what is left of it is written off",
             description="A `void` ledger entry removes the unused remainder; credit already consumed is never "
                         "taken back. Voiding again changes nothing. 404 for an unknown grant.")
async def void(grant_id: PathId, request: Request, body: VoidRequest | None = None,
               principal: Principal = Depends(require(Scope.ADMIN)),
               container: Container = Depends(get_container),
               uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    now = await run_in_threadpool(container.clock.now)
    accepted = await run_in_threadpool(partial(
        credits.void, uow, container.engine, grant_id, body.reason if body else None, principal=principal,
        authorize=partial(authorize_customer, principal), now=now, request_id=request.headers.get("x-request-id")))
    return await _answer(container, uow, accepted, grant_id, created=False)


@router.get("/v1/subscriptions/{subscription_id}/credit-grants", response_model=list[CreditGrantView],
            responses=READ_RESPONSES, summary="The subscription's credit grants and what is left of each",
            description="In consumption order (priority, soonest expiry, oldest).")
async def grants(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                 container: Container = Depends(get_container)) -> list[CreditGrantView]:
    return await run_in_threadpool(credits.grants_of, container.engine, subscription_id,
                                   partial(authorize_customer, principal))


@router.get("/v1/customers/{customer_id}/credits", response_model=CustomerCreditsView, responses=READ_RESPONSES,
            summary="The customer's usable credits now, per meter, across its subscriptions")
async def customer_credits(customer_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                           container: Container = Depends(get_container)) -> CustomerCreditsView:
    authorize_customer(principal, customer_id)
    now = await run_in_threadpool(container.clock.now)
    return await run_in_threadpool(credits.credits_of_customer, container.engine, customer_id, now)


@router.post("/v1/subscriptions/{subscription_id}/credit-purchases", status_code=201,
             response_model=CreditPurchaseView, responses=GRANT_RESPONSES,
             summary="Buy prepaid credit: a manual invoice for the price; the credit is granted when it is paid",
             description="The invoice (line \"Prepaid credits\") is charged like any invoice (the customer balance "
                         "first, then the payment method); the credit (source `top_up`, paid-credit priority) is "
                         "granted once it is paid; a voided invoice grants nothing. Money meters only: 422 "
                         "`/problems/invalid-credit-grant` (code `invalid_credit_grant`).")
async def purchase(subscription_id: PathId, body: PurchaseRequest, request: Request,
                   idempotency_key: str | None = Header(default=None, include_in_schema=False),
                   principal: Principal = Depends(require(Scope.ADMIN)),
                   container: Container = Depends(get_container),
                   uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    now = await run_in_threadpool(container.clock.now)
    accepted, purchase_id = await run_in_threadpool(partial(
        credits.purchase, uow, container.current_catalog(), subscription_id, body.meter_id, body.amount_minor,
        body.price_minor, body.expires_at, idempotency_key=idempotency_key, principal=principal,
        authorize=partial(authorize_customer, principal), now=now, request_id=request.headers.get("x-request-id")))
    outcome = await worker_outcome(container, uow, accepted)
    if outcome is None:
        return pending_answer(accepted.command_id, accepted.subscription_id)
    found = [p for p in await run_in_threadpool(credits.purchases_of, container.engine, subscription_id,
                                                lambda _owner: None) if p.purchase_id == purchase_id]
    body_out = found[0].model_dump(mode="json") if found else {"purchase_id": purchase_id}
    return JSONResponse(body_out, status_code=201, headers={
        "Location": f"/v1/subscriptions/{subscription_id}/credit-purchases", "X-Command-Id": str(accepted.command_id)})


@router.get("/v1/subscriptions/{subscription_id}/credit-purchases", response_model=list[CreditPurchaseView],
            responses=READ_RESPONSES, summary="The subscription's prepaid credit purchases, newest first")
async def purchases(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                    container: Container = Depends(get_container)) -> list[CreditPurchaseView]:
    return await run_in_threadpool(credits.purchases_of, container.engine, subscription_id,
                                   partial(authorize_customer, principal))


@router.put("/v1/subscriptions/{subscription_id}/auto-recharge", response_model=AutoRechargeView,
            responses=READ_RESPONSES | {422: PROBLEM_RESPONSES[422]},
            summary="Keep a meter's prepaid credit topped up: below the threshold, buy up to the target",
            description="When the credit left on the meter (its grants less the period's unbilled usage at the "
                         "unit price, as usage is materialised; what is left after a close consumed credits) "
                         "falls below `threshold_minor`, the worker buys `target_minor - remaining` as a prepaid "
                         "purchase (an invoice charged like any other), once per crossing: one recharge pending "
                         "per subscription and meter. 422 `/problems/invalid-credit-grant` for a unit meter or a "
                         "target not above the threshold.")
async def set_auto_recharge(subscription_id: PathId, body: AutoRechargeRequest, request: Request,
                            principal: Principal = Depends(require(Scope.ADMIN)),
                            container: Container = Depends(get_container)) -> AutoRechargeView:
    return await run_in_threadpool(partial(
        credits.set_auto_recharge, container.engine, container.current_catalog(), subscription_id, body.meter_id,
        body.threshold_minor, body.target_minor, body.enabled, principal=principal,
        authorize=partial(authorize_customer, principal), request_id=request.headers.get("x-request-id")))


@router.get("/v1/subscriptions/{subscription_id}/auto-recharge", response_model=list[AutoRechargeView],
            responses=READ_RESPONSES, summary="The subscription's auto-recharge settings, per meter")
async def auto_recharges(subscription_id: PathId, principal: Principal = Depends(require(Scope.READ)),
                         container: Container = Depends(get_container)) -> list[AutoRechargeView]:
    return await run_in_threadpool(credits.auto_recharges_of, container.engine, subscription_id,
                                   partial(authorize_customer, principal))
