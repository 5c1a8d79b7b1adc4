"""Fakes at the edge's ports for unit tests of its use cases (no PostgreSQL, no Kafka)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from services.ingest.auth import Principal
from services.ingest.service_layer.unit_of_work import CustomerRecord, CustomerTerms, Member, Outcome, UnitOfWork
from shared.contracts.envelope import Envelope


@dataclass
class EdgeState:
    """What the fake unit of work commits to: the rows the SQL one would write."""

    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, tuple[str, uuid.UUID]] = field(default_factory=dict)  # subscription -> (customer, command)
    outcomes: dict[uuid.UUID, Outcome] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[tuple[str, str, Envelope]] = field(default_factory=list)
    stripe_events: dict[str, bool] = field(default_factory=dict)  # Stripe event id -> published
    stripe_customers: dict[str, str] = field(default_factory=dict)  # our customer id -> Stripe customer id
    documents: list[tuple[str, str, uuid.UUID, str, Any]] = field(default_factory=list)  # outbox, not envelopes
    unmatched: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (ref, tx) -> row
    customer_rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # onboarded customers by id
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> customer id
    members: dict[str, dict[str, Member]] = field(default_factory=dict)  # customer id -> user id -> member


class FakeUnitOfWork:
    """`UnitOfWork` over an `EdgeState` copy, written back on commit only (a raise discards everything)."""

    def __init__(self, state: EdgeState) -> None:
        self.state = state

    def customer_terms(self, customer_id: str) -> CustomerTerms | None:
        row = self.state.customer_rows.get(customer_id)
        return None if row is None else CustomerTerms(customer_id, row["currency"], row["timezone"],
                                                      row["tax_rate_bps"], row["default_payment_method_id"])

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

    def publish_document(self, topic: str, key: str, event_id: uuid.UUID, event_type: str, body: Any) -> None:
        if all(d[2] != event_id for d in self.state.documents):
            self.state.documents.append((topic, key, event_id, event_type, body))

    def park_usage(self, events: list[tuple[str, str, dict[str, Any]]], submitted_by: str) -> None:
        for ref, tx, body in events:
            self.state.unmatched.setdefault((ref, tx), {
                "id": len(self.state.unmatched) + 1, "customer_ref": ref, "transaction_id": tx, "event": body,
                "submitted_by": submitted_by, "replayed": False})

    def unmatched_to_replay(self, customer_ref: str) -> list[tuple[int, dict[str, Any]]]:
        return sorted((r["id"], r["event"]) for r in self.state.unmatched.values()
                      if r["customer_ref"] == customer_ref and not r["replayed"])

    def mark_replayed(self, row_ids: list[int]) -> None:
        for row in self.state.unmatched.values():
            row["replayed"] = row["replayed"] or row["id"] in row_ids

    def unmatched_page(self, *, customer_ref: str | None, include_replayed: bool, after: int | None,
                       limit: int) -> list[dict[str, Any]]:
        rows = sorted(self.state.unmatched.values(), key=lambda r: r["id"])
        return [r for r in rows if (customer_ref is None or r["customer_ref"] == customer_ref)
                and (include_replayed or not r["replayed"]) and (after is None or r["id"] > after)][:limit]

    def insert_customer(self, values: dict[str, Any]) -> bool:
        if any(r["external_id"] == values["external_id"] for r in self.state.customer_rows.values()):
            return False
        self.state.customer_rows[values["customer_id"]] = {
            **values, "stripe_customer_id": None, "default_payment_method_id": None}
        return True

    def customer_by_external_id(self, external_id: str) -> dict[str, Any]:
        return next(r for r in self.state.customer_rows.values() if r["external_id"] == external_id)

    def add_aliases(self, customer_id: str, aliases: Sequence[str]) -> dict[str, str]:
        for alias in aliases:
            self.state.aliases.setdefault(alias, customer_id)
        return {a: self.state.aliases[a] for a in aliases}

    def add_members(self, customer_id: str, members: Sequence[Member]) -> None:
        for member in members:
            self.state.members.setdefault(customer_id, {}).setdefault(member.user_id, member)

    def update_customer(self, customer_id: str, changes: dict[str, Any]) -> None:
        self.state.customer_rows[customer_id].update(changes)

    def customer(self, customer_id: str) -> CustomerRecord | None:
        row = self.state.customer_rows.get(customer_id)
        if row is None:
            return None
        members = self.state.members.get(customer_id, {})
        return CustomerRecord(**row, aliases=sorted(a for a, c in self.state.aliases.items() if c == customer_id),
                              members=[members[u] for u in sorted(members)])

    def customer_ids(self, after: str | None, limit: int) -> list[str]:
        return sorted(i for i in self.state.customer_rows if after is None or i > after)[:limit]

    def claim_stripe_event(self, stripe_event_id: str, event_type: str) -> bool:
        return self.state.stripe_events.setdefault(stripe_event_id, False)

    def mark_stripe_event_published(self, stripe_event_id: str) -> None:
        self.state.stripe_events[stripe_event_id] = True

    def live_subscriptions_of_stripe_customer(self, stripe_customer_id: str) -> list[tuple[str, str]]:
        return sorted((sid, row["customer_id"]) for sid, row in self.state.subscriptions.items()
                      if self.state.stripe_customers.get(row["customer_id"]) == stripe_customer_id
                      and row["status"] != "cancelled")

    def adopt_payment_method(self, stripe_customer_id: str, payment_method_id: str) -> None:
        for customer_id, stripe_id in self.state.stripe_customers.items():
            row = self.state.customer_rows.get(customer_id)
            if stripe_id == stripe_customer_id and row is not None and row.get("default_payment_method_id") is None:
                row["default_payment_method_id"] = payment_method_id


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
