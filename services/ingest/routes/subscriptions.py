"""Subscription lifecycle: subscribe, change plan, change seats, cancel, pause, resume (admin keys).

Each request becomes one command on `commands.v1` keyed by subscription_id (the edge mints new ids);
the answer is the worker's: 200/201 with the subscription, 409 with the domain's reason, or 202 with a
poll URL when the worker has not answered within `settings.command_wait_seconds`.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.audit import record
from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.commands import Outcome, publish_command, read_outcome, wait_for_outcome
from services.ingest.container import Container, get_container
from services.ingest.ids import BodyId, PathId, PaymentMethodId
from services.ingest.problems import PROBLEM_RESPONSES, FieldError, ProblemError
from services.ingest.views import CommandView, SubscriptionView
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customers
from shared.adapters.postgres.schema.edge import subscription_routes
from shared.contracts.messages import (
    CancelSubscription,
    ChangePlan,
    ChangeSeats,
    CreateSubscription,
    PauseSubscription,
    ResumeSubscription,
    SubscriptionCommand,
)
from shared.domain.errors import DomainError

router = APIRouter(tags=["subscriptions"])

COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    202: {"model": CommandView, "description": "Accepted; the worker has not answered yet: poll `poll_url`"},
    404: PROBLEM_RESPONSES[409] | {"description": "Unknown customer or subscription"},
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscribeRequest(_Body):
    customer_id: BodyId
    plan_id: BodyId
    seats: int = Field(default=1, ge=1, le=100_000)
    trial_days: int | None = Field(default=None, ge=0, le=730, description="null: the plan's default")
    coupon_id: BodyId | None = None
    anchor_day: int | None = Field(default=None, ge=1, le=31, description="null: the start day")
    payment_method_id: PaymentMethodId | None = None


class ChangePlanRequest(_Body):
    plan_id: BodyId
    timing: Literal["auto", "immediate", "period_end"] = "auto"


class ChangeSeatsRequest(_Body):
    seats: int = Field(ge=1, le=100_000)


class CancelRequest(_Body):
    at_period_end: bool = False
    reason: str | None = Field(default=None, max_length=500)


def poll_url(command_id: uuid.UUID | str) -> str:
    return f"/v1/commands/{command_id}"


def load_subscription(engine: sa.Engine, subscription_id: str) -> SubscriptionView | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == subscription_id)
                           ).one_or_none()
    return SubscriptionView.model_validate(row._mapping) if row is not None else None


def owner_of(engine: sa.Engine, subscription_id: str) -> str | None:
    """The customer of a subscription the edge routed (or the worker knows)."""
    with engine.connect() as conn:
        owner = conn.execute(sa.select(subscription_routes.c.customer_id)
                             .where(subscription_routes.c.subscription_id == subscription_id)).scalar_one_or_none()
        if owner is None:
            owner = conn.execute(sa.select(subscriptions.c.customer_id)
                                 .where(subscriptions.c.subscription_id == subscription_id)).scalar_one_or_none()
    return owner


async def answer(container: Container, command_id: uuid.UUID, subscription_id: str, *,
                 created: bool = False) -> JSONResponse:
    """The HTTP answer for a published command (see the module docstring)."""
    outcome = await wait_for_outcome(container, command_id)
    return await render_outcome(container, outcome, command_id, subscription_id, created=created)


async def render_outcome(container: Container, outcome: Outcome | None, command_id: uuid.UUID,
                         subscription_id: str, *, created: bool = False) -> JSONResponse:
    url = poll_url(command_id)
    if outcome is None:
        view = CommandView(command_id=str(command_id), subscription_id=subscription_id, status="pending",
                           poll_url=url)
        return JSONResponse(view.model_dump(mode="json"), status_code=202, headers={"Location": url})
    if outcome.status == "rejected":
        raise ProblemError(409, "Command rejected", outcome.error_detail or outcome.error_code,
                           slug=f"rejected/{outcome.error_code or 'invalid-transition'}",
                           errors=[FieldError(field="subscription", reason=outcome.error_code or "rejected")])
    subscription = await run_in_threadpool(load_subscription, container.engine, subscription_id)
    body = (subscription.model_dump(mode="json") if subscription is not None else
            CommandView(command_id=str(command_id), subscription_id=subscription_id, status=outcome.status,
                        command_type=outcome.command_type, poll_url=url).model_dump(mode="json"))
    return JSONResponse(body, status_code=201 if created else 200,
                        headers={"Location": f"/v1/subscriptions/{subscription_id}", "X-Command-Id": str(command_id)})


@router.post("/v1/subscriptions", status_code=201, response_model=SubscriptionView, responses=COMMAND_RESPONSES,
             summary="Subscribe a customer to a plan")
async def subscribe(body: SubscribeRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                    container: Container = Depends(get_container)) -> JSONResponse:
    authorize_customer(principal, body.customer_id)
    try:
        plan = container.catalog.plan(body.plan_id)
        if body.coupon_id is not None:
            container.catalog.coupon(body.coupon_id)
    except DomainError as exc:
        field = "coupon_id" if body.coupon_id and "coupon" in str(exc) else "plan_id"
        raise ProblemError(422, "Unknown catalog entry", str(exc), slug="validation",
                           errors=[FieldError(field=field, reason=str(exc))]) from exc

    subscription_id = f"sub_{uuid.uuid4().hex}"
    command_id = uuid.uuid4()
    request_id = request.headers.get("x-request-id")

    def register() -> sa.Row[Any]:
        with container.engine.begin() as conn:
            customer = conn.execute(sa.select(customers).where(customers.c.customer_id == body.customer_id)
                                    ).one_or_none()
            if customer is None:
                raise ProblemError(404, "Unknown customer", f"no customer {body.customer_id!r}", slug="not-found")
            if customer.currency != plan.currency:
                raise ProblemError(422, "Currency mismatch", f"plan {plan.id} bills in {plan.currency}, the "
                                   f"customer in {customer.currency}", slug="currency-mismatch",
                                   errors=[FieldError(field="plan_id", reason="currency differs from the customer's")])
            conn.execute(subscription_routes.insert().values(subscription_id=subscription_id,
                                                             customer_id=body.customer_id, command_id=command_id))
            record(conn, principal, "subscription.create", customer_id=body.customer_id,
                   subscription_id=subscription_id, request_id=request_id, command_id=str(command_id),
                   plan_id=body.plan_id, seats=body.seats)
            return customer

    customer = await run_in_threadpool(register)
    command = CreateSubscription(
        subscription_id=subscription_id, customer_id=body.customer_id, plan_id=body.plan_id, seats=body.seats,
        trial_days=body.trial_days, coupon_id=body.coupon_id, anchor_day=body.anchor_day,
        payment_method_id=body.payment_method_id or customer.default_payment_method_id,
        currency=customer.currency, timezone=customer.timezone, tax_rate_bps=customer.tax_rate_bps)
    await publish_command(container, command, correlation_id=request_id, command_id=command_id)
    return await answer(container, command_id, subscription_id, created=True)


async def _command(request: Request, container: Container, principal: Principal, subscription_id: str,
                   build: Any, action: str, **details: Any) -> JSONResponse:
    customer_id = await run_in_threadpool(owner_of, container.engine, subscription_id)
    if customer_id is None:
        raise ProblemError(404, "Unknown subscription", f"no subscription {subscription_id!r}", slug="not-found")
    authorize_customer(principal, customer_id)
    command: SubscriptionCommand = build(customer_id)
    command_id = uuid.uuid4()
    request_id = request.headers.get("x-request-id")

    def audit() -> None:
        with container.engine.begin() as conn:
            record(conn, principal, action, customer_id=customer_id, subscription_id=subscription_id,
                   request_id=request_id, command_id=str(command_id), **details)

    await run_in_threadpool(audit)
    await publish_command(container, command, correlation_id=request_id, command_id=command_id)
    return await answer(container, command_id, subscription_id)


@router.post("/v1/subscriptions/{subscription_id}/change-plan", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Upgrade or downgrade (proration per the plan's rules)")
async def change_plan(subscription_id: PathId, body: ChangePlanRequest, request: Request,
                      principal: Principal = Depends(require(Scope.ADMIN)),
                      container: Container = Depends(get_container)) -> JSONResponse:
    if body.plan_id not in container.catalog.plans:
        raise ProblemError(422, "Unknown plan", f"unknown plan {body.plan_id!r}", slug="validation",
                           errors=[FieldError(field="plan_id", reason="not in the catalog")])
    return await _command(request, container, principal, subscription_id,
                          lambda customer_id: ChangePlan(subscription_id=subscription_id, customer_id=customer_id,
                                                         plan_id=body.plan_id, timing=body.timing),
                          "subscription.change_plan", plan_id=body.plan_id, timing=body.timing)


@router.post("/v1/subscriptions/{subscription_id}/seats", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Change the number of seats")
async def change_seats(subscription_id: PathId, body: ChangeSeatsRequest, request: Request,
                       principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container)) -> JSONResponse:
    return await _command(request, container, principal, subscription_id,
                          lambda customer_id: ChangeSeats(subscription_id=subscription_id, customer_id=customer_id,
                                                          seats=body.seats),
                          "subscription.change_seats", seats=body.seats)


@router.post("/v1/subscriptions/{subscription_id}/cancel", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Cancel now or at the period end")
async def cancel(subscription_id: PathId, body: CancelRequest, request: Request,
                 principal: Principal = Depends(require(Scope.ADMIN)),
                 container: Container = Depends(get_container)) -> JSONResponse:
    return await _command(request, container, principal, subscription_id,
                          lambda customer_id: CancelSubscription(
                              subscription_id=subscription_id, customer_id=customer_id,
                              at_period_end=body.at_period_end, reason=body.reason),
                          "subscription.cancel", at_period_end=body.at_period_end)


@router.post("/v1/subscriptions/{subscription_id}/pause", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Pause")
async def pause(subscription_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                container: Container = Depends(get_container)) -> JSONResponse:
    return await _command(request, container, principal, subscription_id,
                          lambda customer_id: PauseSubscription(subscription_id=subscription_id,
                                                                customer_id=customer_id),
                          "subscription.pause")


@router.post("/v1/subscriptions/{subscription_id}/resume", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Resume a paused subscription")
async def resume(subscription_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                 container: Container = Depends(get_container)) -> JSONResponse:
    return await _command(request, container, principal, subscription_id,
                          lambda customer_id: ResumeSubscription(subscription_id=subscription_id,
                                                                 customer_id=customer_id),
                          "subscription.resume")


@router.get("/v1/commands/{command_id}", response_model=CommandView, responses=PROBLEM_RESPONSES,
            summary="The worker's outcome of a command")
async def command_status(command_id: uuid.UUID, principal: Principal = Depends(require(Scope.READ)),
                         container: Container = Depends(get_container)) -> CommandView:
    outcome = await run_in_threadpool(read_outcome, container.engine, command_id)

    def routed() -> tuple[str, str] | None:
        with container.engine.connect() as conn:
            row = conn.execute(sa.select(subscription_routes.c.subscription_id, subscription_routes.c.customer_id)
                               .where(subscription_routes.c.command_id == command_id)).one_or_none()
        return (row.subscription_id, row.customer_id) if row is not None else None

    if outcome is None:
        known = await run_in_threadpool(routed)
        if known is None and not principal.is_admin:
            raise ProblemError(404, "Unknown command", slug="not-found")
        if known is not None:
            authorize_customer(principal, known[1])
        return CommandView(command_id=str(command_id), subscription_id=known[0] if known else "",
                           status="pending", poll_url=poll_url(command_id))
    owner = await run_in_threadpool(owner_of, container.engine, outcome.subscription_id)
    if owner is not None:
        authorize_customer(principal, owner)
    subscription = await run_in_threadpool(load_subscription, container.engine, outcome.subscription_id)
    return CommandView(command_id=str(command_id), subscription_id=outcome.subscription_id,
                       command_type=outcome.command_type, status=outcome.status, error_code=outcome.error_code,
                       error_detail=outcome.error_detail, poll_url=poll_url(command_id), subscription=subscription)

