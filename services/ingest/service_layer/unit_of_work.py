"""The edge's unit of work: one PostgreSQL transaction of a use case, with the outbox inside it.

Use cases (`lifecycle`, `webhooks`, `usage_intake`) take a `UnitOfWorkFactory`: `with uow() as work:` begins a
transaction, commits when the block ends and rolls back when it raises. Whatever must reach Kafka together
with the rows is handed to `work.publish`, which writes it to the outbox in the same transaction (the relay
publishes it after the commit): an edge write is never half done (rows committed, message lost).
Unit tests give the use cases a fake with the same methods (tests/unit/edge/fakes.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from services.ingest.audit import record
from services.ingest.auth import Principal
from shared.adapters.postgres.outbox import add_to_outbox
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import command_outcomes, customers
from shared.adapters.postgres.schema.edge import stripe_webhook_events, subscription_routes
from shared.adapters.postgres.subscription_reads import live_subscriptions_of_stripe_customer
from shared.contracts.envelope import Envelope


@dataclass(frozen=True)
class CustomerTerms:
    """What a subscription inherits from its customer."""

    customer_id: str
    currency: str
    timezone: str
    tax_rate_bps: int
    default_payment_method_id: str | None


@dataclass(frozen=True)
class Outcome:
    """The worker's answer to a command (`command_outcomes`)."""

    command_id: uuid.UUID
    subscription_id: str
    command_type: str
    status: str  # applied | rejected | ignored
    error_code: str | None = None
    error_detail: str | None = None
    result: dict[str, Any] | None = None


class UnitOfWork(Protocol):
    def customer_terms(self, customer_id: str) -> CustomerTerms | None: ...

    def owner_of(self, subscription_id: str) -> str | None:
        """The customer of a subscription the edge routed (or the worker knows)."""

    def route_subscription(self, subscription_id: str, customer_id: str, command_id: uuid.UUID) -> None: ...

    def routed_by(self, command_id: uuid.UUID) -> tuple[str, str] | None:
        """(subscription_id, customer_id) of the subscription a create command routed, if any."""

    def outcome(self, command_id: uuid.UUID) -> Outcome | None: ...

    def subscription(self, subscription_id: str) -> dict[str, Any] | None:
        """The worker's read model row of a subscription."""

    def audit(self, principal: Principal, action: str, **fields: Any) -> None: ...

    def publish(self, topic: str, key: str, envelope: Envelope) -> None:
        """Send `envelope` to `topic` once this unit of work commits (an outbox row; nothing if it rolls back)."""

    def claim_stripe_event(self, stripe_event_id: str, event_type: str) -> bool:
        """Record a Stripe event and lock its row until this unit of work ends; True if it was already
        published (a concurrent identical delivery waits here for the first one's commit)."""

    def mark_stripe_event_published(self, stripe_event_id: str) -> None: ...

    def live_subscriptions_of_stripe_customer(self, stripe_customer_id: str) -> list[tuple[str, str]]:
        """(subscription_id, customer_id) of every live subscription of a Stripe customer."""


UnitOfWorkFactory = Callable[[], AbstractContextManager[UnitOfWork]]


class SqlUnitOfWork:
    """`UnitOfWork` over one connection in a transaction."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def customer_terms(self, customer_id: str) -> CustomerTerms | None:
        row = self.conn.execute(sa.select(customers.c.customer_id, customers.c.currency, customers.c.timezone,
                                          customers.c.tax_rate_bps, customers.c.default_payment_method_id)
                                .where(customers.c.customer_id == customer_id)).one_or_none()
        return None if row is None else CustomerTerms(**row._asdict())

    def owner_of(self, subscription_id: str) -> str | None:
        owner: str | None = self.conn.execute(
            sa.select(subscription_routes.c.customer_id)
            .where(subscription_routes.c.subscription_id == subscription_id)).scalar_one_or_none()
        if owner is None:
            owner = self.conn.execute(sa.select(subscriptions.c.customer_id)
                                      .where(subscriptions.c.subscription_id == subscription_id)
                                      ).scalar_one_or_none()
        return owner

    def route_subscription(self, subscription_id: str, customer_id: str, command_id: uuid.UUID) -> None:
        self.conn.execute(subscription_routes.insert().values(subscription_id=subscription_id,
                                                              customer_id=customer_id, command_id=command_id))

    def routed_by(self, command_id: uuid.UUID) -> tuple[str, str] | None:
        row = self.conn.execute(sa.select(subscription_routes.c.subscription_id, subscription_routes.c.customer_id)
                                .where(subscription_routes.c.command_id == command_id)).one_or_none()
        return None if row is None else (row.subscription_id, row.customer_id)

    def outcome(self, command_id: uuid.UUID) -> Outcome | None:
        row = self.conn.execute(sa.select(command_outcomes).where(command_outcomes.c.command_id == command_id)
                                ).one_or_none()
        return None if row is None else Outcome(row.command_id, row.subscription_id, row.command_type, row.status,
                                                row.error_code, row.error_detail, row.result)

    def subscription(self, subscription_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == subscription_id)
                                ).one_or_none()
        return None if row is None else dict(row._mapping)

    def audit(self, principal: Principal, action: str, **fields: Any) -> None:
        record(self.conn, principal, action, **fields)

    def publish(self, topic: str, key: str, envelope: Envelope) -> None:
        add_to_outbox(self.conn, [(topic, key, envelope)])

    def claim_stripe_event(self, stripe_event_id: str, event_type: str) -> bool:
        self.conn.execute(insert(stripe_webhook_events).values(stripe_event_id=stripe_event_id,
                                                               event_type=event_type).on_conflict_do_nothing())
        published: bool = self.conn.execute(
            sa.select(stripe_webhook_events.c.published)
            .where(stripe_webhook_events.c.stripe_event_id == stripe_event_id).with_for_update()).scalar_one()
        return published

    def mark_stripe_event_published(self, stripe_event_id: str) -> None:
        self.conn.execute(sa.update(stripe_webhook_events)
                          .where(stripe_webhook_events.c.stripe_event_id == stripe_event_id).values(published=True))

    def live_subscriptions_of_stripe_customer(self, stripe_customer_id: str) -> list[tuple[str, str]]:
        return live_subscriptions_of_stripe_customer(self.conn, stripe_customer_id)


def sql_unit_of_work(engine: sa.Engine) -> UnitOfWorkFactory:
    """The factory use cases are given in production: one `engine.begin()` transaction per unit of work."""

    @contextmanager
    def begin() -> Iterator[UnitOfWork]:
        with engine.begin() as conn:
            yield SqlUnitOfWork(conn)

    return begin
