"""Lifecycle commands at the edge, against a fake unit of work: what is checked before a command is sent, and
that the command, its route and its audit row commit together (the outbox) or not at all."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.ingest.auth import Principal, Scope
from services.ingest.service_layer import lifecycle
from shared.adapters.catalog_file import load_default_catalog
from shared.contracts import topics
from shared.contracts.messages import PauseSubscription
from shared.domain.errors import CurrencyMismatchError

from .fakes import FakeDatabase

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ADMIN = Principal(key_id="admin", scopes=frozenset({Scope.ADMIN}))
CATALOG = load_default_catalog()


def _database(currency: str = "USD") -> FakeDatabase:
    db = FakeDatabase()
    db.state.customer_rows["cust_1"] = {
        "customer_id": "cust_1", "external_id": "acme", "kind": "org", "name": "Acme", "email": "b@acme.test",
        "currency": currency, "timezone": "Europe/Paris", "tax_rate_bps": 2000, "stripe_customer_id": "cus_1",
        "default_payment_method_id": "pm_default"}
    return db


def _subscribe(db: FakeDatabase, **fields: object) -> lifecycle.Accepted:
    request = lifecycle.Subscribe(**{"customer_id": "cust_1", "plan_id": "pro", **fields})  # type: ignore[arg-type]
    return lifecycle.subscribe(db, CATALOG, request, principal=ADMIN, now=NOW, request_id="req-1")


def test_subscribe_routes_audits_and_sends_the_create_command_in_one_commit() -> None:
    db = _database()

    accepted = _subscribe(db, seats=3)

    assert accepted.subscription_id.startswith("sub_") and db.commits == 1
    assert db.state.routes == {accepted.subscription_id: ("cust_1", accepted.command_id)}
    assert [a["action"] for a in db.state.audit] == ["subscription.create"]
    [(topic, key, envelope)] = db.state.outbox
    assert (topic, key, envelope.event_id, envelope.type) == (
        topics.COMMANDS, accepted.subscription_id, accepted.command_id, "subscription.create")
    assert (envelope.correlation_id, envelope.occurred_at, envelope.producer) == ("req-1", NOW, "ingest")


def test_the_create_command_carries_the_customers_terms_and_default_payment_method() -> None:
    db = _database()

    _subscribe(db)

    payload = db.state.outbox[0][2].payload
    assert (payload["currency"], payload["timezone"], payload["tax_rate_bps"], payload["payment_method_id"]) == (
        "USD", "Europe/Paris", 2000, "pm_default")


def test_each_subscribe_mints_a_new_subscription_id() -> None:
    db = _database()

    assert _subscribe(db).subscription_id != _subscribe(db).subscription_id


def test_a_plan_sold_in_another_currency_is_refused_and_nothing_is_written() -> None:
    db = _database(currency="EUR")

    with pytest.raises(CurrencyMismatchError):
        _subscribe(db)

    assert (db.commits, db.state.routes, db.state.outbox, db.state.audit) == (0, {}, [], [])


def test_an_unknown_customer_plan_or_coupon_is_refused_before_anything_is_sent() -> None:
    db = _database()

    with pytest.raises(lifecycle.UnknownCustomer):
        _subscribe(db, customer_id="cust_nobody")
    with pytest.raises(lifecycle.UnknownCatalogEntry) as plan:
        _subscribe(db, plan_id="no_such_plan")
    with pytest.raises(lifecycle.UnknownCatalogEntry) as coupon:
        _subscribe(db, coupon_id="no_such_coupon")

    assert (plan.value.field, coupon.value.field) == ("plan_id", "coupon_id")
    assert db.state.outbox == []


def _pause(db: FakeDatabase, subscription_id: str, authorize: object = lambda customer_id: None) -> lifecycle.Accepted:
    return lifecycle.send_command(
        db, subscription_id, lambda customer_id: PauseSubscription(subscription_id=subscription_id,
                                                                   customer_id=customer_id),
        "subscription.pause", principal=ADMIN, authorize=authorize, now=NOW, request_id=None)  # type: ignore[arg-type]


def test_a_command_about_a_routed_subscription_is_audited_and_sent_keyed_by_it() -> None:
    db = _database()
    created = _subscribe(db)

    paused = _pause(db, created.subscription_id)

    topic, key, envelope = db.state.outbox[-1]
    assert (topic, key, envelope.event_id, envelope.type) == (
        topics.COMMANDS, created.subscription_id, paused.command_id, "subscription.pause")
    assert envelope.payload["customer_id"] == "cust_1"
    assert db.state.audit[-1]["action"] == "subscription.pause"


def test_a_command_about_an_unknown_subscription_is_refused() -> None:
    db = _database()

    with pytest.raises(lifecycle.UnknownSubscription):
        _pause(db, "sub_nobody")

    assert db.state.outbox == []


def test_a_caller_refused_by_authorisation_sends_nothing() -> None:
    db = _database()
    created = _subscribe(db)

    class Forbidden(Exception):
        pass

    def refuse(customer_id: str) -> None:
        raise Forbidden(customer_id)

    with pytest.raises(Forbidden):
        _pause(db, created.subscription_id, authorize=refuse)

    assert [a["action"] for a in db.state.audit] == ["subscription.create"] and len(db.state.outbox) == 1


def test_command_status_is_pending_with_the_routed_owner_until_the_worker_answers() -> None:
    db = _database()
    created = _subscribe(db)

    status = lifecycle.command_status(db, created.command_id)

    assert (status.outcome, status.subscription_id, status.owner) == (None, created.subscription_id, "cust_1")
    assert lifecycle.command_status(db, uuid.uuid4()).owner is None
