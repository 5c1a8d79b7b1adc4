"""The fan-out consumer on a real broker with the project's consumer config (offsets never auto-stored): every
event of a backlog larger than one batch is fanned out once and the group's committed offsets reach the end.

Before the fix a bare `commit()` failed with _NO_OFFSET after every batch: the batch was sought back and consumed
again forever, so nothing past the first batch was ever fanned out (the demo's receiver never saw the credit notes
issued after the close)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from services.webhooks.entrypoints.fan_out_consumer import FanOutConsumer
from shared.adapters.clock import ManualClock
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from tests.unit.webhooks.fakes import FakeDeliveryStore

pytestmark = pytest.mark.integration
EVENTS = 12


class NoLetters:
    def publish(self, letters: object) -> None:
        assert not letters


def test_a_backlog_larger_than_a_batch_is_fanned_out_once_and_committed(settings: Settings) -> None:
    topic = settings.topic(topics.BILLING_EVENTS)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for n in range(EVENTS):
        envelope = new_envelope("invoice.paid", {"invoice_id": f"in_{n}", "subscription_id": "sub_1",
                                                 "customer_id": "cus_1", "status": "paid", "total_minor": 100,
                                                 "currency": "USD"},
                                producer="test", occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
        producer.produce(topic, envelope.to_bytes(), key=b"sub_1")
    assert producer.flush(10) == 0
    store = FakeDeliveryStore()
    store.add_endpoint("we_all", ["*"])
    group = f"{settings.topic_prefix}fan-out-{uuid.uuid4().hex[:6]}"
    kafka = Consumer(settings.kafka_consumer_config(group))
    fan_out = FanOutConsumer(kafka, topic, store, ManualClock(datetime(2026, 1, 2, tzinfo=UTC)), NoLetters(),
                             batch_size=5, retry_pause=0.1)  # type: ignore[arg-type]
    stop = threading.Event()
    worker = threading.Thread(target=fan_out.run, args=(stop,), daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while len(store.rows) < EVENTS and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let the last commit land
    stop.set()
    worker.join(15)

    assert len(store.rows) == EVENTS
    probe = Consumer(settings.kafka_consumer_config(group))
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        assert sum(max(tp.offset, 0) for tp in committed) == EVENTS
    finally:
        probe.close()
