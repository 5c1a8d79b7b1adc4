"""Fakes at the edge's ports for unit tests of its use cases (no PostgreSQL, no Kafka)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from services.ingest.auth import Principal
from services.ingest.service_layer.unit_of_work import CustomerTerms, Outcome, UnitOfWork
from shared.contracts.envelope import Envelope


@dataclass
class EdgeState:
    """What the fake unit of work commits to: the rows the SQL one would write."""

    customers: dict[str, CustomerTerms] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, tuple[str, uuid.UUID]] = field(default_factory=dict)  # subscription -> (customer, command)
    outcomes: dict[uuid.UUID, Outcome] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[tuple[str, str, Envelope]] = field(default_factory=list)
    stripe_events: dict[str, bool] = field(default_factory=dict)  # Stripe event id -> published
    stripe_customers: dict[str, str] = field(default_factory=dict)  # our customer id -> Stripe customer id


class FakeUnitOfWork:
    """`UnitOfWork` over an `EdgeState` copy, written back on commit only (a raise discards everything)."""

    def __init__(self, state: EdgeState) -> None:
        self.state = state

    def customer_terms(self, customer_id: str) -> CustomerTerms | None:
        return self.state.customers.get(customer_id)

    def owner_of(self, subscription_id: str) -> str | None:
        route = self.state.routes.get(subscription_id)
        if route is not None:
            return route[0]
        row = self.state.subscriptions.get(subscription_id)
        return None if row is None else str(row["customer_id"])

    def route_subscription(self, subscription_id: str, customer_id: str, command_id: uuid.UUID) -> None:
        assert subscription_id not in self.state.routes, "subscription_routes is keyed by subscription_id"
        self.state.routes[subscription_id] = (customer_id, command_id)

    def routed_by(self, command_id: uuid.UUID) -> tuple[str, str] | None:
        return next(((sid, cid) for sid, (cid, cmd) in self.state.routes.items() if cmd == command_id), None)

    def outcome(self, command_id: uuid.UUID) -> Outcome | None:
        return self.state.outcomes.get(command_id)

    def subscription(self, subscription_id: str) -> dict[str, Any] | None:
        return self.state.subscriptions.get(subscription_id)

    def audit(self, principal: Principal, action: str, **fields: Any) -> None:
        self.state.audit.append({"actor_key_id": principal.key_id, "action": action, **fields})

    def publish(self, topic: str, key: str, envelope: Envelope) -> None:
        self.state.outbox.append((topic, key, envelope))

    def claim_stripe_event(self, stripe_event_id: str, event_type: str) -> bool:
        return self.state.stripe_events.setdefault(stripe_event_id, False)

    def mark_stripe_event_published(self, stripe_event_id: str) -> None:
        self.state.stripe_events[stripe_event_id] = True

    def live_subscriptions_of_stripe_customer(self, stripe_customer_id: str) -> list[tuple[str, str]]:
        return sorted((sid, row["customer_id"]) for sid, row in self.state.subscriptions.items()
                      if self.state.stripe_customers.get(row["customer_id"]) == stripe_customer_id
                      and row["status"] != "cancelled")


class FakeDatabase:
    """A `UnitOfWorkFactory`: each unit of work sees the committed state and commits only if its block ends."""

    def __init__(self) -> None:
        self.state = EdgeState()
        self.commits = 0

    @contextmanager
    def __call__(self) -> Iterator[UnitOfWork]:
        work = FakeUnitOfWork(deepcopy(self.state))
        yield work
        self.state = work.state
        self.commits += 1
