"""A message PostgreSQL refuses for a data reason is dead-lettered, not retried forever; a message that keeps
failing with a 'transient' error while the database answers is parked after a bounded number of attempts.
Either way the other subscriptions' commands apply (issue 12, defect 2)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer

from services.billing_worker.bootstrap import build_worker
from services.billing_worker.service_layer.handlers import Handler
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.schema.core import command_outcomes
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import CreateSubscription
from tests.integration.worker.harness import wait_until, worker_thread

pytestmark = pytest.mark.integration

AT = datetime(2026, 1, 10, 12, tzinfo=UTC)


def create_command(sub: str, customer_id: str) -> Envelope:
    payload = CreateSubscription(subscription_id=sub, customer_id=customer_id, plan_id="pro", currency="USD",
                                 payment_method_id="pm_card_visa")
    return new_envelope("subscription.create", payload.model_dump(mode="json"), producer="kcat",
                        occurred_at=AT)


def produce(settings, envelopes: list[tuple[str, Envelope]]) -> None:  # type: ignore[no-untyped-def]
    producer = KafkaProducer(settings, client_id="error-classification-test")
    producer.send_and_wait([OutgoingMessage.of(topics.COMMANDS, key, env) for key, env in envelopes])
    producer.close()


def dead_letter(settings, logical: str, value_starts: bytes):  # type: ignore[no-untyped-def]
    """The first dead letter of `logical` whose value starts with `value_starts` (reads from the beginning)."""
    consumer = Consumer(settings.kafka_consumer_config(f"dlq-{uuid.uuid4().hex}"))
    consumer.subscribe([settings.topic(topics.dlq(logical))])
    try:
        for _ in range(120):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and (msg.value() or b"").startswith(value_starts):
                return msg
    finally:
        consumer.close()
    raise AssertionError(f"no dead letter starting with {value_starts[:40]!r} on {logical}")


def outcomes(engine: sa.Engine, *envelopes: Envelope) -> dict[uuid.UUID, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(command_outcomes.c.command_id, command_outcomes.c.status,
                                      command_outcomes.c.error_code)
                            .where(command_outcomes.c.command_id.in_([e.event_id for e in envelopes]))).all()
    return {r.command_id: (r.status, r.error_code) for r in rows}


def test_an_id_too_large_for_its_index_is_dead_lettered_and_another_subscriptions_command_applies(
        settings, engine):  # type: ignore[no-untyped-def]
    bad_sub, good_sub = f"sub_{uuid.uuid4().hex}", f"sub_{uuid.uuid4().hex}"
    # 10,000 random characters do not compress under the btree's 2,704-byte limit: SQLSTATE 54000.
    huge_customer = "cus_" + "".join(uuid.uuid4().hex for _ in range(313))[:10_000]
    bad = create_command(bad_sub, huge_customer)
    good = create_command(good_sub, f"cus_{uuid.uuid4().hex[:10]}")
    produce(settings, [(bad_sub, bad), (good_sub, good)])

    with worker_thread(settings):
        wait_until(lambda: len(outcomes(engine, bad, good)) == 2, timeout=60,
                   what="both commands to have an outcome")

    found = outcomes(engine, bad, good)
    assert found[good.event_id] == ("applied", None)
    assert found[bad.event_id] == ("rejected", "program_limit_exceeded")
    letter = dead_letter(settings, topics.COMMANDS, bad.to_bytes())
    headers = dict(letter.headers())
    assert letter.value() == bad.to_bytes()
    assert headers["reason"] == b"program_limit_exceeded"
    assert b"index row" in headers["error"] and b"SQLSTATE 54000" in headers["error"]


def test_a_message_that_keeps_failing_while_the_database_answers_is_parked_and_the_next_applies(
        settings, engine):  # type: ignore[no-untyped-def]
    stuck_sub, other_sub = f"sub_{uuid.uuid4().hex}", f"sub_{uuid.uuid4().hex}"

    def pause(uow, envelope, payload, at):  # type: ignore[no-untyped-def]
        if payload.subscription_id == stuck_sub:
            # A real 'transient' error (57014 query_canceled) that this message raises on every attempt.
            uow.conn.execute(sa.text("SET LOCAL statement_timeout = '1ms'"))
            uow.conn.execute(sa.text("SELECT pg_sleep(0.05)"))
        # returning normally: the bus stores the `applied` outcome

    stuck = new_envelope("subscription.pause", {"subscription_id": stuck_sub, "customer_id": "cus_1"},
                         producer="kcat", occurred_at=AT)
    other = new_envelope("subscription.pause", {"subscription_id": other_sub, "customer_id": "cus_2"},
                         producer="kcat", occurred_at=AT)
    produce(settings, [(stuck_sub, stuck), (other_sub, other)])

    worker = build_worker(settings.model_copy(update={"worker_attempts_before_parking": 3}), relay=False,
                          handlers={"subscription.pause": Handler(pause)}, background=False,
                          session_timeout_ms=6000)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(outcomes(engine, stuck, other)) == 2, timeout=60,
                   what="both commands to have an outcome")
    finally:
        stop.set()
        thread.join(60)

    found = outcomes(engine, stuck, other)
    assert found[other.event_id] == ("applied", None)
    assert found[stuck.event_id] == ("rejected", "retries_exhausted")
    assert worker.consumer.stats.suspect_batches >= 1
    headers = dict(dead_letter(settings, topics.COMMANDS, stuck.to_bytes()).headers())
    assert headers["reason"] == b"retries_exhausted"
    assert b"statement timeout" in headers["error"] and b"QueryCanceled" in headers["error"]


def test_a_subscription_id_too_large_to_store_even_as_an_outcome_is_dead_lettered_and_the_worker_goes_on(
        settings, engine):  # type: ignore[no-untyped-def]
    # The rejected outcome is keyed by the subscription id too: storing it fails like the command did.
    huge_sub = "sub_" + "".join(uuid.uuid4().hex for _ in range(313))[:10_000]
    good_sub = f"sub_{uuid.uuid4().hex}"
    bad = create_command(huge_sub, f"cus_{uuid.uuid4().hex[:10]}")
    good = create_command(good_sub, f"cus_{uuid.uuid4().hex[:10]}")
    produce(settings, [(good_sub, bad), (good_sub, good)])  # same key: the good one waits behind the bad one

    with worker_thread(settings):
        wait_until(lambda: good.event_id in outcomes(engine, good), timeout=60, what="the good command's outcome")

    assert outcomes(engine, bad, good) == {good.event_id: ("applied", None)}
    assert dict(dead_letter(settings, topics.COMMANDS, bad.to_bytes()).headers())["reason"] == \
        b"program_limit_exceeded"


def test_a_message_too_large_to_dead_letter_with_its_headers_is_dead_lettered_truncated_and_the_worker_goes_on(
        settings, engine):  # type: ignore[no-untyped-def]
    good_sub = f"sub_{uuid.uuid4().hex}"
    # Undecodable, and over librdkafka's default 1,000,000-byte message limit, under the broker's 1 MiB (a
    # Java producer's max.request.size).
    huge = b"\xff" + b"x" * 1_040_000
    good = create_command(good_sub, f"cus_{uuid.uuid4().hex[:10]}")
    producer = KafkaProducer(settings, client_id="error-classification-test",
                             **{"message.max.bytes": 1_048_576, "compression.type": "none"})
    producer.send_and_wait([OutgoingMessage(topics.COMMANDS, good_sub, huge),
                            OutgoingMessage.of(topics.COMMANDS, good_sub, good)])
    producer.close()

    with worker_thread(settings):
        wait_until(lambda: good.event_id in outcomes(engine, good), timeout=60, what="the good command's outcome")

    assert outcomes(engine, good) == {good.event_id: ("applied", None)}
    letter = dead_letter(settings, topics.COMMANDS, b"\xffxxx")
    headers = dict(letter.headers())
    assert headers["reason"] == b"invalid_envelope"
    assert headers["original_value_bytes"] == str(len(huge)).encode()
    assert letter.value() == huge[:len(letter.value())] and len(letter.value()) < len(huge)


def test_when_every_message_of_a_batch_keeps_failing_none_is_parked_and_all_apply_once_the_cause_is_gone(
        settings, engine):  # type: ignore[no-untyped-def]
    # A cause around the batch (a lock held by a migration, a timeout set on the role) fails every message
    # alike while the database answers: parking would empty the stream into the DLQ.
    sub = f"sub_{uuid.uuid4().hex}"
    cause_gone = threading.Event()

    def pause(uow, envelope, payload, at):  # type: ignore[no-untyped-def]
        if not cause_gone.is_set():
            uow.conn.execute(sa.text("SET LOCAL statement_timeout = '1ms'"))
            uow.conn.execute(sa.text("SELECT pg_sleep(0.05)"))
        # returning normally: the bus stores the `applied` outcome

    first, second = (new_envelope("subscription.pause", {"subscription_id": sub, "customer_id": "cus_1"},
                                  producer="kcat", occurred_at=AT) for _ in range(2))
    produce(settings, [(sub, first), (sub, second)])

    worker = build_worker(settings.model_copy(update={"worker_attempts_before_parking": 2}), relay=False,
                          handlers={"subscription.pause": Handler(pause)}, background=False,
                          session_timeout_ms=6000)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: worker.consumer.stats.suspect_batches >= 1 and worker.consumer.stats.retries >= 4,
                   timeout=60, what="the batch to be searched as a suspect and retried")
        assert outcomes(engine, first, second) == {}  # nothing parked meanwhile
        cause_gone.set()
        wait_until(lambda: len(outcomes(engine, first, second)) == 2, timeout=60,
                   what="both commands to have an outcome")
    finally:
        stop.set()
        thread.join(60)

    # A parked command would have kept its first outcome, "rejected" (retries_exhausted).
    assert outcomes(engine, first, second) == {first.event_id: ("applied", None), second.event_id: ("applied", None)}
