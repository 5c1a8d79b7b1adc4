"""The edge's unit of work: one PostgreSQL transaction of a use case, with the outbox inside it.

Use cases (`lifecycle`, `webhooks`, `usage_intake`) take a `UnitOfWorkFactory`: `with uow() as work:` begins a
transaction, commits when the block ends and rolls back when it raises. Whatever must reach Kafka together
with the rows is handed to `work.publish`, which writes it to the outbox in the same transaction (the relay
publishes it after the commit): an edge write is never half done (rows committed, message lost).
Unit tests give the use cases a fake with the same methods (tests/unit/edge/fakes.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from services.ingest.audit import record
from services.ingest.auth import Principal
from shared.adapters.postgres.outbox import add_documents_to_outbox, add_to_outbox, rows_committed
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import command_outcomes, customer_aliases, customers, org_members
from shared.adapters.postgres.schema.edge import stripe_webhook_events, subscription_routes, unmatched_usage
from shared.adapters.postgres.subscription_reads import (
    live_subscriptions_of_stripe_customer,
    newest_live_subscription,
)
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
class Member:
    user_id: str
    email: str | None = None
    role: str = "member"


@dataclass(frozen=True)
class CustomerRecord:
    """A customer as onboarded, with its ingest aliases and (organisations) members."""

    customer_id: str
    external_id: str
    kind: str
    name: str
    email: str
    currency: str
    timezone: str
    tax_rate_bps: int
    stripe_customer_id: str | None = None
    default_payment_method_id: str | None = None
    invoice_grace_seconds: int | None = None  # None: the issuer's default (BILLING_INVOICE_GRACE_SECONDS)
    aliases: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    custom_fields: dict[str, str] = field(default_factory=dict)
    archived_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


_CUSTOMER_FIELDS: Final = frozenset(f.name for f in fields(CustomerRecord)) - {"aliases", "members"}


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

    def publish_document(self, topic: str, key: str, event_id: uuid.UUID, event_type: str, body: Any) -> None:
        """`publish` for a message whose value is `body` (JSON) rather than an envelope."""

    def park_usage(self, events: list[tuple[str, str, dict[str, Any]]], submitted_by: str) -> None:
        """Store (customer reference, transaction_id, event JSON) of unknown customers; a repeat is ignored."""

    def unmatched_to_replay(self, customer_ref: str) -> list[tuple[int, dict[str, Any]]]:
        """(row id, event JSON) of the reference's parked usage not replayed yet, in arrival order, locked."""

    def mark_replayed(self, row_ids: list[int]) -> None: ...

    def unmatched_page(self, *, customer_ref: str | None, include_replayed: bool, after: int | None,
                       limit: int) -> list[dict[str, Any]]:
        """Parked usage rows by id, after `after`, at most `limit`."""

    def insert_customer(self, values: dict[str, Any]) -> bool:
        """Insert a customer row unless one has its external_id; True if inserted."""

    def customer_by_external_id(self, external_id: str) -> dict[str, Any]:
        """The customer row of an external id, locked until the end of the unit of work."""

    def add_aliases(self, customer_id: str, aliases: Sequence[str]) -> dict[str, str]:
        """Add the aliases not taken yet; returns the owner of each of `aliases` afterwards."""

    def add_members(self, customer_id: str, members: Sequence[Member]) -> None: ...

    def update_customer(self, customer_id: str, changes: dict[str, Any]) -> None: ...

    def customer(self, customer_id: str) -> CustomerRecord | None:
        """A customer with its aliases and members."""

    def customer_ids(self, after: str | None, limit: int) -> list[str]: ...

    def customer_ids_where(self, after: str | None, limit: int, *, customer_ids: Sequence[str] | None = None,
                           alias: str | None = None, archived: bool = False) -> list[str]:
        """Customer ids in order after `after`: archived ones or the others, optionally among `customer_ids`
        or owning `alias` (the Metronome list's filters)."""

    def replace_aliases(self, customer_id: str, aliases: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Make `aliases` the customer's aliases: returns the aliases it lost, and the owner of each of
        `aliases` afterwards (another customer's alias is not taken)."""

    def has_live_subscription(self, customer_id: str) -> bool:
        """Does the customer have a subscription that is not cancelled (`subscription_reads.is_live`)?"""

    def claim_stripe_event(self, stripe_event_id: str, event_type: str) -> bool:
        """Record a Stripe event and lock its row until this unit of work ends; True if it was already
        published (a concurrent identical delivery waits here for the first one's commit)."""

    def mark_stripe_event_published(self, stripe_event_id: str) -> None: ...

    def live_subscriptions_of_stripe_customer(self, stripe_customer_id: str) -> list[tuple[str, str]]:
        """(subscription_id, customer_id) of every live subscription of a Stripe customer."""

    def adopt_payment_method(self, stripe_customer_id: str, payment_method_id: str) -> None:
        """Make a payment method attached in Stripe the default of the customer of that Stripe customer when
        it has none (what its next subscriptions are charged with)."""


UnitOfWorkFactory = Callable[[], AbstractContextManager[UnitOfWork]]


class SqlUnitOfWork:
    """`UnitOfWork` over one connection in a transaction."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.published = False  # outbox rows written: the relay is woken once they are committed

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
        self.published = True

    def publish_document(self, topic: str, key: str, event_id: uuid.UUID, event_type: str, body: Any) -> None:
        add_documents_to_outbox(self.conn, [(topic, key, event_id, event_type, body)])
        self.published = True

    def park_usage(self, events: list[tuple[str, str, dict[str, Any]]], submitted_by: str) -> None:
        if events:
            self.conn.execute(insert(unmatched_usage).on_conflict_do_nothing(), [
                {"customer_ref": ref, "transaction_id": tx, "event": body, "submitted_by": submitted_by}
                for ref, tx, body in events])

    def unmatched_to_replay(self, customer_ref: str) -> list[tuple[int, dict[str, Any]]]:
        rows = self.conn.execute(sa.select(unmatched_usage.c.id, unmatched_usage.c.event).where(
            unmatched_usage.c.customer_ref == customer_ref, unmatched_usage.c.replayed_at.is_(None))
            .order_by(unmatched_usage.c.id).with_for_update()).all()
        return [(row.id, row.event) for row in rows]

    def mark_replayed(self, row_ids: list[int]) -> None:
        self.conn.execute(sa.update(unmatched_usage).where(unmatched_usage.c.id.in_(row_ids))
                          .values(replayed_at=sa.func.now()))

    def unmatched_page(self, *, customer_ref: str | None, include_replayed: bool, after: int | None,
                       limit: int) -> list[dict[str, Any]]:
        query = sa.select(unmatched_usage).order_by(unmatched_usage.c.id).limit(limit)
        if after is not None:
            query = query.where(unmatched_usage.c.id > after)
        if customer_ref is not None:
            query = query.where(unmatched_usage.c.customer_ref == customer_ref)
        if not include_replayed:
            query = query.where(unmatched_usage.c.replayed_at.is_(None))
        return [dict(row._mapping) for row in self.conn.execute(query)]

    def insert_customer(self, values: dict[str, Any]) -> bool:
        inserted = self.conn.execute(insert(customers).values(**values).on_conflict_do_nothing(
            index_elements=["external_id"]).returning(customers.c.customer_id)).first()
        return inserted is not None

    def customer_by_external_id(self, external_id: str) -> dict[str, Any]:
        return dict(self.conn.execute(sa.select(customers).where(customers.c.external_id == external_id)
                                      .with_for_update()).one()._mapping)

    def add_aliases(self, customer_id: str, aliases: Sequence[str]) -> dict[str, str]:
        self.conn.execute(insert(customer_aliases).on_conflict_do_nothing(),
                          [{"alias": a, "customer_id": customer_id} for a in aliases])
        return {r.alias: r.customer_id for r in self.conn.execute(
            sa.select(customer_aliases.c.alias, customer_aliases.c.customer_id)
            .where(customer_aliases.c.alias.in_(aliases)))}

    def add_members(self, customer_id: str, members: Sequence[Member]) -> None:
        self.conn.execute(insert(org_members).on_conflict_do_nothing(), [
            {"customer_id": customer_id, "user_id": m.user_id, "email": m.email, "role": m.role} for m in members])

    def update_customer(self, customer_id: str, changes: dict[str, Any]) -> None:
        self.conn.execute(sa.update(customers).where(customers.c.customer_id == customer_id)
                          .values(**changes, updated_at=sa.func.now()))

    def customer(self, customer_id: str) -> CustomerRecord | None:
        row = self.conn.execute(sa.select(customers).where(customers.c.customer_id == customer_id)).one_or_none()
        if row is None:
            return None
        aliases = self.conn.execute(sa.select(customer_aliases.c.alias)
                                    .where(customer_aliases.c.customer_id == customer_id)
                                    .order_by(customer_aliases.c.alias)).scalars().all()
        members = self.conn.execute(sa.select(org_members).where(org_members.c.customer_id == customer_id)
                                    .order_by(org_members.c.user_id)).all()
        return CustomerRecord(**{k: v for k, v in row._mapping.items() if k in _CUSTOMER_FIELDS},
                              aliases=list(aliases),
                              members=[Member(user_id=m.user_id, email=m.email, role=m.role) for m in members])

    def customer_ids(self, after: str | None, limit: int) -> list[str]:
        query = sa.select(customers.c.customer_id).order_by(customers.c.customer_id).limit(limit)
        if after is not None:
            query = query.where(customers.c.customer_id > after)
        return list(self.conn.execute(query).scalars().all())

    def customer_ids_where(self, after: str | None, limit: int, *, customer_ids: Sequence[str] | None = None,
                           alias: str | None = None, archived: bool = False) -> list[str]:
        query = (sa.select(customers.c.customer_id).order_by(customers.c.customer_id).limit(limit)
                 .where(customers.c.archived_at.is_not(None) if archived else customers.c.archived_at.is_(None)))
        if after is not None:
            query = query.where(customers.c.customer_id > after)
        if customer_ids is not None:
            query = query.where(customers.c.customer_id.in_(list(customer_ids)))
        if alias is not None:
            query = query.where(customers.c.customer_id.in_(
                sa.select(customer_aliases.c.customer_id).where(customer_aliases.c.alias == alias)))
        return list(self.conn.execute(query).scalars().all())

    def replace_aliases(self, customer_id: str, aliases: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        lost = self.conn.execute(sa.delete(customer_aliases).where(
            customer_aliases.c.customer_id == customer_id, customer_aliases.c.alias.not_in(list(aliases)))
            .returning(customer_aliases.c.alias)).scalars().all()
        owners = self.add_aliases(customer_id, aliases) if aliases else {}
        return sorted(lost), owners

    def has_live_subscription(self, customer_id: str) -> bool:
        return self.conn.execute(newest_live_subscription(customer_id, subscriptions.c.subscription_id)
                                 ).first() is not None

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

    def adopt_payment_method(self, stripe_customer_id: str, payment_method_id: str) -> None:
        self.conn.execute(sa.update(customers).where(customers.c.stripe_customer_id == stripe_customer_id,
                                                     customers.c.default_payment_method_id.is_(None))
                          .values(default_payment_method_id=payment_method_id))


def sql_unit_of_work(engine: sa.Engine) -> UnitOfWorkFactory:
    """The factory use cases are given in production: one `engine.begin()` transaction per unit of work."""

    @contextmanager
    def begin() -> Iterator[UnitOfWork]:
        with engine.begin() as conn:
            work = SqlUnitOfWork(conn)
            yield work
        if work.published:
            rows_committed()

    return begin
