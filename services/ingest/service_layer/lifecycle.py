"""Lifecycle commands (subscribe, change plan, change seats, cancel, pause, resume, cancel a scheduled change,
revoke a cancellation at the period end): the edge's half. Whether something is scheduled is the worker's to
say (`nothing_scheduled`): the read model may not show a change still on its way to it.

The billing worker is the single writer of subscription state; the edge checks what it can know, mints the
ids, and hands the worker a command on `commands.v1`. The route row (new subscriptions), the audit row and the
command's outbox row commit in ONE transaction: an accepted command reaches the worker even if Kafka is down
when it is accepted (the outbox relay publishes it once the broker is back), and a command whose rows did not
commit is never sent. The worker records an outcome per command (`command_outcomes`, keyed by the command's
event_id); `wait_for_outcome` polls it for at most the configured wait.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.ingest.auth import Principal
from services.ingest.service_layer.refusals import (
    LifecycleRefusal,
    PlanNotSoldInCurrency,
    UnknownCatalogEntry,
    UnknownCustomer,
    UnknownSubscription,
)
from services.ingest.service_layer.unit_of_work import Outcome, UnitOfWorkFactory
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import TYPE_OF, CreateSubscription, SubscriptionCommand
from shared.domain.catalog import Catalog
from shared.domain.errors import CurrencyMismatchError, DomainError

PRODUCER = "ingest"
POLL_INTERVAL_SECONDS = 0.05

__all__ = ["Accepted", "LifecycleRefusal", "Outcome", "PlanNotSoldInCurrency", "Subscribe", "UnknownCatalogEntry",
           "UnknownCustomer", "UnknownSubscription",
           "new_subscription_id", "send_command", "subscribe", "wait_for_outcome"]


@dataclass(frozen=True)
class Subscribe:
    customer_id: str
    plan_id: str
    seats: int = 1
    trial_days: int | None = None
    coupon_id: str | None = None
    anchor_day: int | None = None
    payment_method_id: str | None = None
    subscription_id: str | None = None  # None: minted here (a caller that stores it beside may mint it first)


@dataclass(frozen=True)
class Accepted:
    """A command committed to the outbox: the worker will see it."""

    command_id: uuid.UUID
    subscription_id: str


def new_subscription_id() -> str:
    """# NOTE: the edge mints subscription ids, so the create command is keyed (partitioned) by its id."""
    return f"sub_{uuid.uuid4().hex}"


def _envelope(command: SubscriptionCommand, command_id: uuid.UUID, now: datetime,
              correlation_id: str | None) -> Envelope:
    return new_envelope(TYPE_OF[type(command)], command.model_dump(mode="json"), producer=PRODUCER,
                        occurred_at=now, correlation_id=correlation_id, event_id=command_id)


def subscribe(uow: UnitOfWorkFactory, catalog: Catalog, request: Subscribe, *, principal: Principal,
              now: datetime, request_id: str | None) -> Accepted:
    """Route a new subscription to its customer and send its create command.

    Refuses an unknown plan or coupon (`UnknownCatalogEntry`), an unknown customer (`UnknownCustomer`) and a
    plan sold in another currency than the customer's (`PlanNotSoldInCurrency`, a `CurrencyMismatchError`).
    """
    try:
        plan = catalog.plan(request.plan_id)
        if request.coupon_id is not None:
            catalog.coupon(request.coupon_id)
    except DomainError as exc:
        field = "coupon_id" if request.coupon_id and "coupon" in str(exc) else "plan_id"
        raise UnknownCatalogEntry(str(exc), field=field) from exc
    subscription_id, command_id = request.subscription_id or new_subscription_id(), uuid.uuid4()
    with uow() as work:
        customer = work.customer_terms(request.customer_id)
        if customer is None:
            raise UnknownCustomer(f"no customer {request.customer_id!r}", field="customer_id")
        plan = catalog.plan_in(plan.id, customer.currency)  # the plan's price list in the customer's currency
        try:
            plan.require_sold_in(customer.currency)
        except CurrencyMismatchError as exc:
            raise PlanNotSoldInCurrency(request.plan_id, exc.left, exc.right) from exc
        work.route_subscription(subscription_id, request.customer_id, command_id)
        work.audit(principal, "subscription.create", customer_id=request.customer_id,
                   subscription_id=subscription_id, request_id=request_id, command_id=str(command_id),
                   plan_id=plan.id, seats=request.seats)
        command = CreateSubscription(
            subscription_id=subscription_id, customer_id=request.customer_id, plan_id=plan.id,
            seats=request.seats, trial_days=request.trial_days, coupon_id=request.coupon_id,
            anchor_day=request.anchor_day,
            payment_method_id=request.payment_method_id or customer.default_payment_method_id,
            currency=customer.currency, timezone=customer.timezone, tax_rate_bps=customer.tax_rate_bps)
        work.publish(topics.COMMANDS, subscription_id, _envelope(command, command_id, now, request_id))
    return Accepted(command_id, subscription_id)


def send_command(uow: UnitOfWorkFactory, subscription_id: str, build: Callable[[str], SubscriptionCommand],
                 action: str, *, principal: Principal, authorize: Callable[[str], None], now: datetime,
                 request_id: str | None, **details: Any) -> Accepted:
    """Send a command about an existing subscription: `build(customer_id)` makes it once its owner is known
    and `authorize(customer_id)` accepted the caller; audited as `action` with `details`."""
    command_id = uuid.uuid4()
    with uow() as work:
        customer_id = work.owner_of(subscription_id)
        if customer_id is None:
            raise UnknownSubscription(f"no subscription {subscription_id!r}", field="subscription_id")
        authorize(customer_id)
        work.audit(principal, action, customer_id=customer_id, subscription_id=subscription_id,
                   request_id=request_id, command_id=str(command_id), **details)
        work.publish(topics.COMMANDS, subscription_id, _envelope(build(customer_id), command_id, now, request_id))
    return Accepted(command_id, subscription_id)


def outcome_of(uow: UnitOfWorkFactory, command_id: uuid.UUID) -> Outcome | None:
    with uow() as work:
        return work.outcome(command_id)


async def wait_for_outcome(uow: UnitOfWorkFactory, command_id: uuid.UUID, wait_seconds: float,
                           run: Callable[..., Any]) -> Outcome | None:
    """The worker's outcome, polled until it exists or `wait_seconds` passed; `run` runs a blocking call
    off the event loop (starlette's `run_in_threadpool`)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        outcome: Outcome | None = await run(outcome_of, uow, command_id)
        if outcome is not None or time.monotonic() >= deadline:
            return outcome
        await asyncio.sleep(POLL_INTERVAL_SECONDS)


@dataclass(frozen=True)
class CommandStatus:
    """What `GET /v1/commands/{id}` reports: the outcome (None: pending), the subscription and its owner."""

    outcome: Outcome | None
    subscription_id: str | None
    owner: str | None
    subscription: dict[str, Any] | None


def command_status(uow: UnitOfWorkFactory, command_id: uuid.UUID) -> CommandStatus:
    with uow() as work:
        outcome = work.outcome(command_id)
        if outcome is None:
            routed = work.routed_by(command_id)
            return CommandStatus(None, routed[0] if routed else None, routed[1] if routed else None, None)
        return CommandStatus(outcome, outcome.subscription_id, work.owner_of(outcome.subscription_id),
                             work.subscription(outcome.subscription_id))


def subscription_of(uow: UnitOfWorkFactory, subscription_id: str) -> dict[str, Any] | None:
    with uow() as work:
        return work.subscription(subscription_id)


def owner_of(uow: UnitOfWorkFactory, subscription_id: str) -> str | None:
    with uow() as work:
        return work.owner_of(subscription_id)
