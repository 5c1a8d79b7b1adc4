"""The foundation works against the real stack: broker round trip, migrations, stripe-mock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer

from shared.adapters.clock import ClockRefusedError, DatabaseClock
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.schema.core import outbox
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope

pytestmark = pytest.mark.integration


def test_a_usage_envelope_produced_with_acks_all_is_consumed_back_intact(settings):
    producer = KafkaProducer(settings, client_id="test-foundation")
    sent = new_envelope("usage.recorded", {"transaction_id": "tx-1", "customer_id": "cus_1",
                                           "event_type": "inference", "properties": {"tokens": 1200}},
                        producer="test", occurred_at=datetime.now(UTC))
    [delivered] = producer.send_and_wait([OutgoingMessage.of(topics.USAGE, "sub_1", sent)])
    producer.close()

    consumer = Consumer(settings.kafka_consumer_config(f"g-{uuid.uuid4().hex}"))
    consumer.subscribe([settings.topic(topics.USAGE)])
    try:
        msg = None
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None
        assert (msg.partition(), msg.offset()) == (delivered.partition, delivered.offset)
        assert msg.key() == b"sub_1"
        assert Envelope.from_bytes(msg.value()) == sent
    finally:
        consumer.close()


def test_the_outbox_table_created_by_the_migrations_stores_and_returns_an_envelope(engine):
    env = new_envelope("invoice.finalized", {"invoice_id": "in_1", "total_minor": 1234},
                       producer="test", occurred_at=datetime(2026, 1, 31, tzinfo=UTC))
    with engine.begin() as conn:
        conn.execute(outbox.insert().values(topic=topics.BILLING_EVENTS, message_key="sub_1",
                                            event_id=env.event_id, event_type=env.type,
                                            envelope=env.model_dump(mode="json")))
    with engine.connect() as conn:
        row = conn.execute(sa.select(outbox).where(outbox.c.event_id == env.event_id)).one()
    assert Envelope.model_validate(row.envelope) == env
    assert row.published_at is None


def test_the_outbox_refuses_a_second_row_with_the_same_event_id(engine):
    env = new_envelope("x", {}, producer="test", occurred_at=datetime.now(UTC))
    values = dict(topic="t", message_key="k", event_id=env.event_id, event_type="x", envelope={})
    with engine.begin() as conn:
        conn.execute(outbox.insert().values(**values))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(outbox.insert().values(**values))


def test_the_simulated_billing_clock_moves_forward_only(engine):
    clock = DatabaseClock(engine, datetime(2026, 1, 1, tzinfo=UTC), clock_id=f"c-{uuid.uuid4().hex}")
    assert clock.now() == datetime(2026, 1, 1, tzinfo=UTC)
    assert clock.advance(timedelta(days=31)) == datetime(2026, 2, 1, tzinfo=UTC)
    with pytest.raises(ClockRefusedError):
        clock.advance(timedelta(seconds=-1))


def test_a_customer_is_created_through_the_stripe_sdk_against_stripe_mock(stripe_api_base):
    import stripe

    client = stripe.StripeClient("sk_test_123", base_addresses={"api": stripe_api_base})
    customer = client.customers.create(params={"email": "ada@example.com", "name": "Ada"},
                                       options={"idempotency_key": str(uuid.uuid4())})
    assert customer.id.startswith("cus_")
    assert customer.object == "customer"


def test_the_outbox_compresses_large_envelopes_with_lz4(engine):
    """A hot org's bundle of usage events (~17 kB) is compressed as it is stored: with pglz, the default, that
    was 5.6 % of PostgreSQL's samples in the hot-org probe."""
    with engine.connect() as conn:
        method = conn.execute(sa.text(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'outbox'::regclass AND attname = 'envelope'"
        )).scalar_one()
    assert method == "l"


def test_the_billing_workers_sessions_sort_a_runs_bundles_in_memory(settings):
    """The worker's engine asks for WORK_MEM_MB per sort (a run's bundles spilled to disk at the default)."""
    from services.billing_worker.bootstrap import WORK_MEM_MB
    from shared.adapters.postgres.engine import make_engine

    worker_engine = make_engine(settings, work_mem_mb=WORK_MEM_MB, pool_size=1)
    try:
        with worker_engine.connect() as conn:
            assert conn.execute(sa.text("SHOW work_mem")).scalar_one() == f"{WORK_MEM_MB}MB"
            assert conn.execute(sa.text("SHOW timezone")).scalar_one() == "UTC"  # the other options kept
            assert conn.execute(sa.text("SELECT current_schema()")).scalar_one() == settings.database_schema
    finally:
        worker_engine.dispose()
