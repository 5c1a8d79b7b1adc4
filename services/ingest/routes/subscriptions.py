"""Subscription lifecycle: subscribe, change plan, change seats, cancel, pause, resume, and undo what is scheduled
for the period end (a plan or seat change, a cancellation) (admin keys).

Each request becomes one command on `commands.v1` keyed by subscription_id, written to the outbox with its
audit row (`services.ingest.service_layer.lifecycle` holds the use cases); the answer is the worker's:
200/201 with the subscription, 409 with the domain's reason, or 202 with a poll URL when the worker has not
answered within `settings.command_wait_seconds`. These routes only decode, call and encode.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.ingest.auth import Principal, Scope, authorize_customer, require
from services.ingest.container import Container, get_container
from services.ingest.ids import BodyId, PathId, PaymentMethodId
from services.ingest.problems import PROBLEM_RESPONSES, FieldError, ProblemError, command_rejected
from services.ingest.service_layer import catalog as catalog_use_cases
from services.ingest.service_layer import lifecycle
from services.ingest.service_layer.lifecycle import Accepted, Outcome
from services.ingest.service_layer.refusals import CatalogRefusal, UnknownSubscription
from services.ingest.service_layer.unit_of_work import UnitOfWorkFactory, sql_unit_of_work
from services.ingest.views import CommandView, SubscriptionView
from shared.contracts.messages import (
    CancelScheduledChange,
    CancelSubscription,
    ChangePlan,
    ChangeSeats,
    PauseSubscription,
    ResumeSubscription,
    RevokeCancellation,
)

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


def unit_of_work(container: Container = Depends(get_container)) -> UnitOfWorkFactory:
    return sql_unit_of_work(container.engine)


def owner_of(engine: Any, subscription_id: str) -> str | None:
    """The customer of a subscription the edge routed (or the worker knows)."""
    return lifecycle.owner_of(sql_unit_of_work(engine), subscription_id)


async def _accept(call: Any, *args: Any, **kwargs: Any) -> Accepted:
    """Run a lifecycle use case; its refusals (`LifecycleRefusal`) are answered by the problem layer."""
    accepted: Accepted = await run_in_threadpool(call, *args, **kwargs)
    return accepted


async def worker_outcome(container: Container, uow: UnitOfWorkFactory, accepted: Accepted) -> Outcome | None:
    """The worker's outcome of an accepted command within the configured wait (None: not answered yet, see
    `pending_answer`); a refusal is raised as its problem (409 with the refusal's code)."""
    outcome = await lifecycle.wait_for_outcome(uow, accepted.command_id, container.settings.command_wait_seconds,
                                               run_in_threadpool)
    if outcome is not None and outcome.status == "rejected":
        raise command_rejected(outcome.error_code, outcome.error_detail)
    return outcome


def pending_answer(command_id: uuid.UUID, subscription_id: str) -> JSONResponse:
    """202 with the command's poll URL: the worker has not answered within the wait."""
    url = poll_url(command_id)
    view = CommandView(command_id=str(command_id), subscription_id=subscription_id, status="pending", poll_url=url)
    return JSONResponse(view.model_dump(mode="json"), status_code=202, headers={"Location": url})


async def answer(container: Container, uow: UnitOfWorkFactory, accepted: Accepted, *,
                 created: bool = False) -> JSONResponse:
    """The HTTP answer for an accepted command (see the module docstring)."""
    outcome = await worker_outcome(container, uow, accepted)
    return await render_outcome(uow, outcome, accepted.command_id, accepted.subscription_id, created=created)


async def render_outcome(uow: UnitOfWorkFactory, outcome: Outcome | None, command_id: uuid.UUID,
                         subscription_id: str, *, created: bool = False) -> JSONResponse:
    if outcome is None:
        return pending_answer(command_id, subscription_id)
    url = poll_url(command_id)
    row = await run_in_threadpool(lifecycle.subscription_of, uow, subscription_id)
    body = (SubscriptionView.model_validate(row).model_dump(mode="json") if row is not None else
            CommandView(command_id=str(command_id), subscription_id=subscription_id, status=outcome.status,
                        command_type=outcome.command_type, poll_url=url).model_dump(mode="json"))
    return JSONResponse(body, status_code=201 if created else 200,
                        headers={"Location": f"/v1/subscriptions/{subscription_id}", "X-Command-Id": str(command_id)})


@router.post("/v1/subscriptions", status_code=201, response_model=SubscriptionView, responses=COMMAND_RESPONSES,
             summary="Subscribe a customer to a plan")
async def subscribe(body: SubscribeRequest, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                    container: Container = Depends(get_container),
                    uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    authorize_customer(principal, body.customer_id)
    now = await run_in_threadpool(container.clock.now)
    catalog = await run_in_threadpool(container.current_catalog, body.plan_id)
    catalog_use_cases.refuse_archived(container.archived, body.plan_id, body.coupon_id)
    plan_id = container.current_plan_id(body.plan_id)  # a plan sold in versions: its current one, pinned
    accepted = await _accept(lifecycle.subscribe, uow, catalog, lifecycle.Subscribe(
        customer_id=body.customer_id, plan_id=plan_id, seats=body.seats, trial_days=body.trial_days,
        coupon_id=body.coupon_id, anchor_day=body.anchor_day, payment_method_id=body.payment_method_id),
        principal=principal, now=now, request_id=request.headers.get("x-request-id"))
    return await answer(container, uow, accepted, created=True)


async def _command(request: Request, container: Container, uow: UnitOfWorkFactory, principal: Principal,
                   subscription_id: str, build: Any, action: str, **details: Any) -> JSONResponse:
    now = await run_in_threadpool(container.clock.now)
    accepted = await _accept(lifecycle.send_command, uow, subscription_id, build, action, principal=principal,
                             authorize=partial(authorize_customer, principal), now=now,
                             request_id=request.headers.get("x-request-id"), **details)
    return await answer(container, uow, accepted)


@router.post("/v1/subscriptions/{subscription_id}/change-plan", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Upgrade or downgrade (proration per the plan's rules)")
async def change_plan(subscription_id: PathId, body: ChangePlanRequest, request: Request,
                      principal: Principal = Depends(require(Scope.ADMIN)),
                      container: Container = Depends(get_container),
                      uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    if body.plan_id not in (await run_in_threadpool(container.current_catalog, body.plan_id)).plans:
        raise ProblemError(422, "Unknown plan", f"unknown plan {body.plan_id!r}", slug="validation",
                           errors=[FieldError(field="plan_id", reason="not in the catalog")])
    catalog_use_cases.refuse_archived(container.archived, body.plan_id)
    plan_id = container.current_plan_id(body.plan_id)
    return await _command(request, container, uow, principal, subscription_id,
                          lambda customer_id: ChangePlan(subscription_id=subscription_id, customer_id=customer_id,
                                                         plan_id=plan_id, timing=body.timing),
                          "subscription.change_plan", plan_id=plan_id, timing=body.timing)


class MigrateRequest(_Body):
    version: int | None = Field(default=None, ge=1, description="the plan version to move to (default: current)")
    at: Literal["period_end", "now"] = Field(
        default="period_end", description="period_end: the period under way is billed at the version it was "
                                          "sold; now: at once, prorated like a plan change")


@router.post("/v1/subscriptions/{subscription_id}/migrate", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Move a subscription to another version of its plan")
async def migrate(subscription_id: PathId, request: Request, body: MigrateRequest | None = None,
                  principal: Principal = Depends(require(Scope.ADMIN)),
                  container: Container = Depends(get_container),
                  uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    body = body or MigrateRequest()
    current = await run_in_threadpool(catalog_use_cases.subscription_plan, container.engine, subscription_id)
    if current is None:
        raise UnknownSubscription(f"unknown subscription {subscription_id!r}")
    versions: dict[str, int] = {}
    if container.catalog_provider is not None:  # the newest versions (one just created through the API)
        await run_in_threadpool(container.catalog_provider.refresh)
        versions = container.catalog_provider.versions
    target = catalog_use_cases.migration_target(current, body.version, versions)
    if target not in (await run_in_threadpool(container.current_catalog, target)).plans:
        raise CatalogRefusal(f"no version {body.version} of this plan", code="unknown_plan_version",
                             fields=[("version", "not a version of the subscription's plan")])
    timing = "period_end" if body.at == "period_end" else "immediate"
    return await _command(request, container, uow, principal, subscription_id,
                          lambda customer_id: ChangePlan(subscription_id=subscription_id, customer_id=customer_id,
                                                         plan_id=target, timing=timing),
                          "subscription.migrate", plan_id=target, timing=timing)


@router.post("/v1/subscriptions/{subscription_id}/seats", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Change the number of seats")
async def change_seats(subscription_id: PathId, body: ChangeSeatsRequest, request: Request,
                       principal: Principal = Depends(require(Scope.ADMIN)),
                       container: Container = Depends(get_container),
                       uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    return await _command(request, container, uow, principal, subscription_id,
                          lambda customer_id: ChangeSeats(subscription_id=subscription_id, customer_id=customer_id,
                                                          seats=body.seats),
                          "subscription.change_seats", seats=body.seats)


@router.post("/v1/subscriptions/{subscription_id}/cancel", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Cancel now or at the period end")
async def cancel(subscription_id: PathId, body: CancelRequest, request: Request,
                 principal: Principal = Depends(require(Scope.ADMIN)),
                 container: Container = Depends(get_container),
                 uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    return await _command(request, container, uow, principal, subscription_id,
                          lambda customer_id: CancelSubscription(
                              subscription_id=subscription_id, customer_id=customer_id,
                              at_period_end=body.at_period_end, reason=body.reason),
                          "subscription.cancel", at_period_end=body.at_period_end)


@router.post("/v1/subscriptions/{subscription_id}/pause", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Pause")
async def pause(subscription_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                container: Container = Depends(get_container),
                uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    return await _command(request, container, uow, principal, subscription_id,
                          lambda customer_id: PauseSubscription(subscription_id=subscription_id,
                                                                customer_id=customer_id),
                          "subscription.pause")


@router.post("/v1/subscriptions/{subscription_id}/resume", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Resume a paused subscription")
async def resume(subscription_id: PathId, request: Request, principal: Principal = Depends(require(Scope.ADMIN)),
                 container: Container = Depends(get_container),
                 uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    return await _command(request, container, uow, principal, subscription_id,
                          lambda customer_id: ResumeSubscription(subscription_id=subscription_id,
                                                                 customer_id=customer_id),
                          "subscription.resume")


@router.delete("/v1/subscriptions/{subscription_id}/scheduled-change", response_model=SubscriptionView,
               responses=COMMAND_RESPONSES,
               summary="Cancel the downgrade or seat reduction scheduled for the period end",
               description="409 `/problems/rejected/nothing_scheduled` when no plan or seat change is scheduled. "
                           "A change-plan (or seats) back to the current plan (or seats) does the same.")
async def cancel_scheduled_change(subscription_id: PathId, request: Request,
                                  principal: Principal = Depends(require(Scope.ADMIN)),
                                  container: Container = Depends(get_container),
                                  uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    return await _command(request, container, uow, principal, subscription_id,
                          lambda customer_id: CancelScheduledChange(subscription_id=subscription_id,
                                                                    customer_id=customer_id),
                          "subscription.cancel_scheduled_change")


@router.post("/v1/subscriptions/{subscription_id}/cancel/revoke", response_model=SubscriptionView,
             responses=COMMAND_RESPONSES, summary="Keep renewing: revoke a cancellation at the period end",
             description="409 `/problems/rejected/nothing_scheduled` when no cancellation is scheduled.")
async def revoke_cancellation(subscription_id: PathId, request: Request,
                              principal: Principal = Depends(require(Scope.ADMIN)),
                              container: Container = Depends(get_container),
                              uow: UnitOfWorkFactory = Depends(unit_of_work)) -> JSONResponse:
    return await _command(request, container, uow, principal, subscription_id,
                          lambda customer_id: RevokeCancellation(subscription_id=subscription_id,
                                                                 customer_id=customer_id),
                          "subscription.revoke_cancellation")


@router.get("/v1/commands/{command_id}", response_model=CommandView, responses=PROBLEM_RESPONSES,
            summary="The worker's outcome of a command")
async def command_status(command_id: uuid.UUID, principal: Principal = Depends(require(Scope.READ)),
                         uow: UnitOfWorkFactory = Depends(unit_of_work)) -> CommandView:
    status = await run_in_threadpool(lifecycle.command_status, uow, command_id)
    outcome = status.outcome
    if outcome is None:
        if status.owner is None and not principal.is_admin:
            raise ProblemError(404, "Unknown command", slug="not-found")
        if status.owner is not None:
            authorize_customer(principal, status.owner)
        return CommandView(command_id=str(command_id), subscription_id=status.subscription_id or "",
                           status="pending", poll_url=poll_url(command_id))
    if status.owner is not None:
        authorize_customer(principal, status.owner)
    subscription = (SubscriptionView.model_validate(status.subscription) if status.subscription is not None
                    else None)
    return CommandView(command_id=str(command_id), subscription_id=outcome.subscription_id,
                       command_type=outcome.command_type, status=outcome.status, error_code=outcome.error_code,
                       error_detail=outcome.error_detail, poll_url=poll_url(command_id), subscription=subscription)
