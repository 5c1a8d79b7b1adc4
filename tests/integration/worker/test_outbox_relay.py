"""The outbox relay publishes unpublished rows in id order per key and marks them published."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer

from services.billing_worker.adapters.outbox import add_outbox
from shared.adapters.kafka.outbox_relay import OutboxRelay
from shared.adapters.kafka.producer import KafkaProducer
from shared.adapters.postgres.schema.core import outbox
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope

pytestmark = pytest.mark.integration


def test_outbox_rows_are_published_in_order_per_key_with_their_event_id_and_marked_published(settings, engine):
    written: dict[str, list[str]] = {"sub_a": [], "sub_b": []}
    with engine.begin() as conn:
        for n in range(300):
            key = "sub_a" if n % 3 else "sub_b"
            env = new_envelope("invoice.finalized", {"invoice_id": f"in_{n}", "n": n}, producer="test",
                               occurred_at=datetime(2026, 2, 1, tzinfo=UTC))
            add_outbox(conn, env, key=key)
            written[key].append(str(env.event_id))

    relay = OutboxRelay(engine, KafkaProducer(settings, client_id="relay-test"), batch=128)
    published = 0
    while (sent := relay.publish_round()) > 0:
        published += sent
    relay.stop()

    consumer = Consumer(settings.kafka_consumer_config(f"relay-{uuid.uuid4().hex}"))
    consumer.subscribe([settings.topic(topics.BILLING_EVENTS)])
    received: dict[str, list[str]] = {"sub_a": [], "sub_b": []}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                env = Envelope.from_bytes(msg.value())
                assert dict(msg.headers())["event_id"] == str(env.event_id).encode()
                received[msg.key().decode()].append(str(env.event_id))
                if sum(map(len, received.values())) == 300:
                    break
    finally:
        consumer.close()

    assert published == 300
    assert [len(v) for v in received.values()] == [len(v) for v in written.values()]
    assert received == written
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(outbox.c.published_at.is_(None))).scalar_one() == 0


def test_a_relay_that_cannot_take_the_relay_lock_publishes_and_marks_nothing(settings, engine):
    with engine.begin() as conn:
        env = new_envelope("invoice.finalized", {"invoice_id": "in_locked"}, producer="test",
                           occurred_at=datetime(2026, 2, 1, tzinfo=UTC))
        add_outbox(conn, env, key="sub_locked")
    relay = OutboxRelay(engine, KafkaProducer(settings, client_id="relay-lock-test"), batch=10)
    try:
        with engine.begin() as holder:  # another relay's round in progress holds the schema's relay lock
            assert holder.execute(sa.text(
                "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '/outbox-relay'))")).scalar_one()
            assert relay.publish_round() == 0
            with engine.connect() as conn:
                assert conn.execute(sa.select(outbox.c.published_at)
                                    .where(outbox.c.event_id == env.event_id)).scalar_one() is None
        assert relay.publish_round() >= 1  # the lock released: this relay publishes it
    finally:
        relay.stop()
    with engine.connect() as conn:
        assert conn.execute(sa.select(outbox.c.published_at)
                            .where(outbox.c.event_id == env.event_id)).scalar_one() is not None
