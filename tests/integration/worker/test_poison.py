"""Poison goes to the topic's DLQ with its reason and original bytes, and the partition moves on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer

from services.billing_worker.bootstrap import build_worker
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.messagebus import MessageRejected
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.schema.core import command_outcomes, outbox
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from tests.integration.worker.harness import drain, materialised, usage_envelope

pytestmark = pytest.mark.integration

AT = datetime(2026, 1, 10, 12, tzinfo=UTC)


def command(type_: str, sub: str) -> bytes:
    return new_envelope(type_, {"subscription_id": sub, "customer_id": "cus_1"}, producer="test",
                        occurred_at=AT).to_bytes()


def read_dlq(settings, logical: str, expected: int) -> list:
    consumer = Consumer(settings.kafka_consumer_config(f"dlq-{uuid.uuid4().hex}"))
    consumer.subscribe([settings.topic(topics.dlq(logical))])
    got = []
    try:
        for _ in range(120):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg)
                if len(got) >= expected:
                    break
    finally:
        consumer.close()
    return got


@pytest.fixture(scope="module")
def run(settings, engine):
    sub = "sub_poison"
    undecodable = b"\xff\xfe not json"
    no_value = usage_envelope(customer_id="cus_1", subscription_id=sub, transaction_id="tx-bad",
                              event_type="inference", properties={"tokens": 3}, timestamp=AT)
    producer = KafkaProducer(settings, client_id="poison-test")
    producer.send_and_wait([
        OutgoingMessage(topics.USAGE, sub, usage_envelope(customer_id="cus_1", subscription_id=sub,
                                                          transaction_id="tx-1", event_type="inference",
                                                          properties={"cost_usd_micros": 10}, timestamp=AT)),
        OutgoingMessage(topics.USAGE, sub, undecodable),
        OutgoingMessage(topics.USAGE, sub, no_value),
        OutgoingMessage(topics.USAGE, sub, usage_envelope(customer_id="cus_1", subscription_id=sub,
                                                          transaction_id="tx-2", event_type="inference",
                                                          properties={"cost_usd_micros": 20}, timestamp=AT)),
        OutgoingMessage(topics.COMMANDS, sub, command("subscription.pause", sub)),
        OutgoingMessage(topics.COMMANDS, sub, command("subscription.resume", sub)),
    ])
    producer.close()

    def refuse(uow, envelope, payload, at):
        uow.emit("subscription.status_changed", {"subscription_id": sub}, key=sub, event_id=None, at=at,
                 correlation=envelope)  # rolled back with it
        raise MessageRejected("cannot pause a subscription that does not exist", code="unknown_subscription")

    def accept(uow, envelope, payload, at):
        uow.emit("subscription.status_changed", {"subscription_id": sub, "new_status": "active"}, key=sub,
                 event_id=None, at=at, correlation=envelope)
        return {"status": "active"}  # the `applied` outcome's result

    worker = build_worker(settings, relay=False, background=False,
                          handlers={"subscription.pause": Handler(refuse), "subscription.resume": Handler(accept)})
    try:
        drain(worker, engine)
    finally:
        worker.consumer.close()
    return {"undecodable": undecodable, "no_value": no_value, "worker": worker}


def test_undecodable_and_unmeasurable_usage_land_in_the_usage_dlq_with_reason_and_bytes(run, settings, engine):
    letters = read_dlq(settings, topics.USAGE, 2)
    by_value = {m.value(): dict(m.headers()) for m in letters}

    assert set(by_value) == {run["undecodable"], run["no_value"]}
    assert by_value[run["undecodable"]]["error_class"] == b"EnvelopeError"
    assert b"not JSON" in by_value[run["undecodable"]]["error"]
    assert b"cost_usd_micros" in by_value[run["no_value"]]["error"]
    assert {h["original_topic"] for h in by_value.values()} == {topics.USAGE.encode()}
    assert {int(h["original_offset"]) for h in by_value.values()} == {1, 2}


def test_the_usage_partition_goes_on_after_poison(run, engine):
    quantity, _, rows = materialised(engine)
    assert quantity == {"sub_poison": 30} and rows == 2


def test_a_command_its_handler_refuses_is_dead_lettered_with_a_rejected_outcome_and_the_next_applies(
        run, settings, engine):
    [letter] = read_dlq(settings, topics.COMMANDS, 1)
    headers = dict(letter.headers())
    assert headers["error_class"] == b"MessageRejected"
    assert b"does not exist" in headers["error"]
    with engine.connect() as conn:
        outcomes = dict(conn.execute(sa.select(command_outcomes.c.command_type, command_outcomes.c.status)).all())
        emitted = conn.execute(sa.select(outbox.c.envelope)).scalars().all()
    assert outcomes == {"subscription.pause": "rejected", "subscription.resume": "applied"}
    assert [e["payload"].get("new_status") for e in emitted] == ["active"]
