"""The webhooks service's PostgreSQL store: a replayed fan-out adds nothing, the claim applies the ordering
rule and never gives one delivery to two dispatchers (SKIP LOCKED, then a lease), and an endpoint failing
for 3 days of the injected clock is disabled with a notice row and its pending deliveries abandoned."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.ingest.service_layer.webhook_endpoints import NewEndpoint, create_endpoint, sql_endpoint_store
from services.webhooks.adapters.sql_store import SqlDeliveryStore, sql_delivery_store
from services.webhooks.service_layer.dispatch import dispatch_due
from services.webhooks.service_layer.fan_out import Consumed, fan_out
from services.webhooks.service_layer.model import AttemptResult, ClaimedDelivery
from shared.adapters.clock import ManualClock
from shared.adapters.postgres.schema.webhooks import (
    webhook_deliveries,
    webhook_endpoint_notices,
    webhook_endpoints,
)
from shared.contracts.envelope import new_envelope

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class Down:
    def send(self, url: str, body: bytes, secrets: Sequence[str]) -> AttemptResult:
        return AttemptResult(False, 503, "HTTP 503", 1)


class Inline:
    def map(self, fn: Any, items: Sequence[ClaimedDelivery]) -> list[AttemptResult]:
        return [fn(item) for item in items]


def batch(*items: tuple[str, str]) -> list[Consumed]:
    return [Consumed(new_envelope(type_, {"subscription_id": sub, "customer_id": "cus_1"}, producer="worker",
                                  occurred_at=T0), sub) for type_, sub in items]


@pytest.fixture(autouse=True)
def no_other_endpoint(engine: sa.Engine) -> None:
    """The tests share the module's schema and may run in any order: each starts with no endpoint enabled."""
    with engine.begin() as conn:
        conn.execute(sa.update(webhook_endpoints).values(enabled=False, disabled_reason="api"))


def endpoint(engine: sa.Engine, url: str) -> str:
    created, _ = create_endpoint(sql_endpoint_store(engine), NewEndpoint(url=url, events=["*"]), actor="test",
                                 request_id=None)
    return created.endpoint_id


def test_replay_ordering_and_skip_locked_claims(engine: sa.Engine) -> None:
    endpoint_id = endpoint(engine, "http://127.0.0.1:9/a")
    stores = sql_delivery_store(engine)
    events = batch(("invoice.finalized", "sub_1"), ("invoice.paid", "sub_1"), ("invoice.finalized", "sub_2"))
    with stores() as store:
        assert fan_out(store, events, T0) == 3
    with stores() as store:
        assert fan_out(store, events, T0) == 0  # the batch consumed again: exactly one row per endpoint and event

    with engine.connect() as first, engine.connect() as second:
        with first.begin():
            claimed = SqlDeliveryStore(first).claim_due(T0, 10, 60, 25)
            # the heads of sub_1 and sub_2; sub_1's invoice.paid waits behind its invoice.finalized
            assert [(d.event_type, d.body["data"]["subscription_id"]) for d in claimed] == [
                ("invoice.finalized", "sub_1"), ("invoice.finalized", "sub_2")]
            with second.begin():  # not blocked by the first's row locks, and given nothing of them
                assert SqlDeliveryStore(second).claim_due(T0, 10, 60, 25) == []
        with second.begin():  # committed: leased, still not claimable
            assert SqlDeliveryStore(second).claim_due(T0, 10, 60, 25) == []
    with engine.begin() as conn:
        conn.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id)
                     .values(status="delivered", leased_until=None))


def test_a_claim_takes_at_most_per_endpoint_deliveries_of_one_endpoint(engine: sa.Engine) -> None:
    busy = endpoint(engine, "http://127.0.0.1:9/busy")
    stores = sql_delivery_store(engine)
    with stores() as store:
        fan_out(store, batch(*(("invoice.finalized", f"cap_{n}") for n in range(30))), T0)
    with stores() as store:
        claimed = store.claim_due(T0, 100, 60, 25)
    assert len([d for d in claimed if d.endpoint_id == busy]) == 25


def test_an_endpoint_failing_for_3_days_is_disabled_with_a_notice(engine: sa.Engine) -> None:
    endpoint_id = endpoint(engine, "http://127.0.0.1:9/down")
    stores = sql_delivery_store(engine)
    with stores() as store:
        fan_out(store, batch(("credits.granted", "sub_9"), ("credits.expired", "sub_9")), T0)
    clock = ManualClock(T0)
    outcomes: list[str] = []
    while "endpoint_disabled" not in outcomes:
        outcomes += [o for d, o in dispatch_due(stores, Down(), Inline(), clock.now()) if d.endpoint_id == endpoint_id]
        with engine.begin() as conn:  # the next round may come before the lease ends (wall clock)
            conn.execute(sa.update(webhook_deliveries).values(leased_until=None))
        clock.advance(timedelta(hours=1))
        assert clock.now() - T0 <= timedelta(days=3, hours=2)
    with engine.connect() as conn:
        row = conn.execute(sa.select(webhook_endpoints).where(webhook_endpoints.c.endpoint_id == endpoint_id)).one()
        assert (row.enabled, row.disabled_reason) == (False, "failing")
        statuses = conn.execute(sa.select(webhook_deliveries.c.status)
                                .where(webhook_deliveries.c.endpoint_id == endpoint_id)).scalars().all()
        assert set(statuses) == {"abandoned"}
        notice = conn.execute(sa.select(webhook_endpoint_notices)
                              .where(webhook_endpoint_notices.c.endpoint_id == endpoint_id)).one()
        assert notice.kind == "endpoint_disabled" and notice.abandoned_deliveries == 1
    with stores() as store:  # a disabled endpoint gets no new deliveries
        assert endpoint_id not in {e.endpoint_id for e in store.enabled_endpoints()}


def test_a_large_fan_out_keeps_the_batch_order_in_seq(engine: sa.Engine) -> None:
    endpoints = {endpoint(engine, "http://127.0.0.1:9/one"), endpoint(engine, "http://127.0.0.1:9/two")}
    stores = sql_delivery_store(engine)
    events = batch(*(("credits.granted", f"order_{n % 7}") for n in range(1200)))
    with stores() as store:
        added = fan_out(store, events, T0)
    ids = [str(item.envelope.event_id) for item in events]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(webhook_deliveries.c.endpoint_id, webhook_deliveries.c.event_id)
                            .where(webhook_deliveries.c.endpoint_id.in_(endpoints))
                            .order_by(webhook_deliveries.c.seq)).all()
    per_endpoint: dict[str, list[str]] = {}
    for endpoint_id, event_id in rows:
        per_endpoint.setdefault(endpoint_id, []).append(str(event_id))
    assert added == len(rows) == 2400 and set(per_endpoint) == endpoints
    assert all(got == ids for got in per_endpoint.values())
