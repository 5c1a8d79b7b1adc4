"""One contract for the edge's unit of work, run against the fake the unit tests use and the PostgreSQL one,
so the two cannot drift: what commits, what a raise rolls back, and what each method reads back."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from services.ingest.auth import Principal, Scope
from services.ingest.service_layer.unit_of_work import Member, UnitOfWorkFactory, sql_unit_of_work
from shared.adapters.postgres.schema.core import outbox
from shared.contracts.envelope import new_envelope
from tests.unit.edge.fakes import FakeDatabase

pytestmark = pytest.mark.integration

ADMIN = Principal(key_id="admin", scopes=frozenset({Scope.ADMIN}))
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class Backend:
    def __init__(self, uow: UnitOfWorkFactory, published: Callable[[], list[tuple[str, str, str]]]) -> None:
        self.uow = uow
        self.published = published  # (topic, key, event type) of the outbox rows, in order


@pytest.fixture(params=["fake", "postgres"])
def backend(request: pytest.FixtureRequest, engine: sa.Engine) -> Backend:
    if request.param == "fake":
        db = FakeDatabase()
        return Backend(db, lambda: [(t, k, e.type) for t, k, e in db.state.outbox]
                       + [(t, k, kind) for t, k, _, kind, _ in db.state.documents])
    marker = uuid.uuid4().hex  # the schema is shared by this module's tests: each test reads its own rows

    def published() -> list[tuple[str, str, str]]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.select(outbox.c.topic, outbox.c.message_key, outbox.c.event_type)
                .where(outbox.c.message_key.like(f"%{marker}%")).order_by(outbox.c.id))]
    backend = Backend(sql_unit_of_work(engine), published)
    backend.marker = marker  # type: ignore[attr-defined]
    return backend


def _key(backend: Backend, name: str) -> str:
    return f"{name}-{getattr(backend, 'marker', 'fake')}"


def _customer(backend: Backend) -> str:
    """A customer onboarded through the port (routes reference one)."""
    customer_id = _key(backend, "cust")
    with backend.uow() as work:
        work.insert_customer({"customer_id": customer_id, "external_id": _key(backend, "ext"), "kind": "org",
                              "name": "Acme", "email": "b@acme.test", "currency": "USD", "timezone": "UTC",
                              "tax_rate_bps": 0})
    return customer_id


def _envelope(kind: str = "subscription.pause") -> Any:
    return new_envelope(kind, {"n": 1}, producer="test", occurred_at=NOW)


def test_a_routed_subscription_has_its_owner_and_its_command(backend: Backend) -> None:
    sid, command_id, customer_id = _key(backend, "sub"), uuid.uuid4(), _customer(backend)
    with backend.uow() as work:
        work.route_subscription(sid, customer_id, command_id)

    with backend.uow() as work:
        assert (work.owner_of(sid), work.routed_by(command_id)) == (customer_id, (sid, customer_id))
        assert (work.owner_of(_key(backend, "nobody")), work.routed_by(uuid.uuid4()), work.outcome(command_id)) == (
            None, None, None)


def test_published_messages_commit_with_the_unit_of_work_and_vanish_with_its_rollback(backend: Backend) -> None:
    kept, dropped, customer_id = _key(backend, "kept"), _key(backend, "dropped"), _customer(backend)
    with backend.uow() as work:
        work.publish("commands.v1", kept, _envelope())
    with pytest.raises(RuntimeError), backend.uow() as work:
        work.route_subscription(dropped, customer_id, uuid.uuid4())
        work.publish("commands.v1", dropped, _envelope())
        raise RuntimeError("refused after the writes")

    assert backend.published() == [("commands.v1", kept, "subscription.pause")]
    with backend.uow() as work:
        assert work.owner_of(dropped) is None


def test_a_stripe_event_is_claimed_until_marked_published(backend: Backend) -> None:
    event_id = _key(backend, "evt")
    with pytest.raises(RuntimeError), backend.uow() as work:
        assert work.claim_stripe_event(event_id, "invoice.paid") is False
        raise RuntimeError("the translation failed")
    with backend.uow() as work:
        assert work.claim_stripe_event(event_id, "invoice.paid") is False
        work.mark_stripe_event_published(event_id)
    with backend.uow() as work:
        assert work.claim_stripe_event(event_id, "invoice.paid") is True


def test_parked_usage_is_stored_once_listed_and_replayed_once(backend: Backend) -> None:
    ref = _key(backend, "ext")
    event = {"transaction_id": "tx-1", "customer_id": ref, "event_type": "inference", "properties": {}}
    with backend.uow() as work:
        work.park_usage([(ref, "tx-1", event), (ref, "tx-2", {**event, "transaction_id": "tx-2"})], "key_1")
        work.park_usage([(ref, "tx-1", event)], "key_1")
    with backend.uow() as work:
        parked = work.unmatched_to_replay(ref)
        listed = work.unmatched_page(customer_ref=ref, include_replayed=False, after=None, limit=10)
        work.mark_replayed([parked[0][0]])
    with backend.uow() as work:
        left = work.unmatched_page(customer_ref=ref, include_replayed=False, after=None, limit=10)
        everything = work.unmatched_page(customer_ref=ref, include_replayed=True, after=None, limit=10)

    assert [body["transaction_id"] for _, body in parked] == ["tx-1", "tx-2"]
    assert [(r["transaction_id"], r["submitted_by"]) for r in listed] == [("tx-1", "key_1"), ("tx-2", "key_1")]
    assert [r["transaction_id"] for r in left] == ["tx-2"] and len(everything) == 2


def test_a_customer_is_inserted_once_per_external_id_with_its_aliases_and_members(backend: Backend) -> None:
    external, customer_id = _key(backend, "ext"), _key(backend, "cust")
    values = {"customer_id": customer_id, "external_id": external, "kind": "org", "name": "Acme",
              "email": "b@acme.test", "currency": "USD", "timezone": "UTC", "tax_rate_bps": 0}
    alias, other = _key(backend, "alias"), _key(backend, "taken")
    with backend.uow() as work:
        assert work.insert_customer(values) is True
        work.add_aliases(customer_id, [other])
    with backend.uow() as work:
        assert work.insert_customer({**values, "customer_id": _key(backend, "other")}) is False
        assert work.customer_by_external_id(external)["customer_id"] == customer_id
        owners = work.add_aliases(customer_id, [alias])
        work.add_members(customer_id, [Member("u2"), Member("u1", "a@acme.test", "owner")])
        work.update_customer(customer_id, {"stripe_customer_id": _key(backend, "cus")})
        terms = work.customer_terms(customer_id)
    with backend.uow() as work:
        record = work.customer(customer_id)
        ids = work.customer_ids(None, 10_000)

    assert owners == {alias: customer_id}
    assert terms is not None and (terms.currency, terms.default_payment_method_id) == ("USD", None)
    assert record is not None and record.stripe_customer_id == _key(backend, "cus")
    assert record.aliases == sorted([alias, other])
    assert [(m.user_id, m.role) for m in record.members] == [("u1", "owner"), ("u2", "member")]
    assert customer_id in ids and ids == sorted(ids)
