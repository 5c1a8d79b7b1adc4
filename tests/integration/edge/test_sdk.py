"""The SDK's direct-to-Kafka producer writes envelopes the pipeline reads as `usage.recorded`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts import topics
from shared.contracts.envelope import Envelope
from shared.contracts.messages import UsageRecorded, parse_payload
from shared.sdk.client import KafkaUsageProducer, UsageRejectedError
from shared.sdk.envelopes import usage_event_id

from .conftest import consume

pytestmark = pytest.mark.integration


def test_the_kafka_producer_writes_usage_envelopes_keyed_by_subscription(edge_settings):
    now = datetime.now(UTC)
    producer = KafkaUsageProducer(edge_settings, producer_name="sdk-test")
    for n in range(3):
        producer.emit({"transaction_id": f"sdk-{n}", "customer_id": "cust_sdk", "event_type": "inference",
                       "timestamp": (now - timedelta(minutes=1)).isoformat(),
                       "properties": {"cost_usd_micros": n}}, subscription_id="sub_sdk")
    producer.close()

    mine = [m for m in consume(edge_settings, topics.USAGE, 200, timeout=5) if m.key() == b"sub_sdk"]
    envelopes = [Envelope.from_bytes(m.value()) for m in mine]
    payloads = [parse_payload(e) for e in envelopes]
    assert producer.delivered == 3
    assert [p.transaction_id for p in payloads if isinstance(p, UsageRecorded)] == ["sdk-0", "sdk-1", "sdk-2"]
    assert envelopes[0].event_id == usage_event_id("cust_sdk", "sdk-0")


def test_the_kafka_producer_refuses_what_the_edge_refuses_before_sending(edge_settings):
    producer = KafkaUsageProducer(edge_settings, producer_name="sdk-test")
    with pytest.raises(UsageRejectedError, match="must not be negative"):
        producer.emit({"transaction_id": "bad", "customer_id": "c", "event_type": "inference",
                       "timestamp": datetime.now(UTC).isoformat(), "properties": {"cost_usd_micros": -1}},
                      subscription_id="sub_x")
    producer.close()
