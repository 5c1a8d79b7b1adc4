"""The billing pipeline end to end on real Kafka and PostgreSQL: a command on commands.v1 creates the
subscription, the executor charges its invoice, the scheduler turns the simulated clock's month end into a
period close, and every invoice ends up paid through payments.v1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer

from services.billing_worker.entrypoints.scheduler import Scheduler
from shared.adapters.clock import DatabaseClock
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.schema.billing import invoices, subscriptions
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import CreateSubscription
from tests.integration.worker.harness import wait_until, worker_thread

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def simulated(settings: Settings) -> Settings:
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": JAN_1.isoformat(),
                                       "scheduler_interval_s": 0.2, "payment_gateway": "simulated"})


@pytest.fixture(scope="module")
def running_worker(simulated: Settings) -> Iterator[None]:
    with worker_thread(simulated):
        yield


def send(settings: Settings, *payloads: CreateSubscription) -> None:
    producer = KafkaProducer(settings, client_id="test-billing-pipeline")
    producer.send_and_wait([OutgoingMessage.of(topics.COMMANDS, p.subscription_id, new_envelope(
        "subscription.create", p.model_dump(mode="json"), producer="test", occurred_at=JAN_1)) for p in payloads])
    producer.close()


def statuses(engine: sa.Engine, sub: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(r.kind, r.status) for r in conn.execute(
            sa.select(invoices.c.kind, invoices.c.status).where(invoices.c.subscription_id == sub)
            .order_by(invoices.c.number_seq))]


def test_a_subscription_is_invoiced_charged_closed_at_month_end_and_charged_again(
        simulated: Settings, engine: sa.Engine, running_worker: None) -> None:
    sub = f"sub_{uuid.uuid4().hex[:10]}"
    send(simulated, CreateSubscription(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="pro",
                                       currency="USD", payment_method_id="pm_card_visa"))
    wait_until(lambda: statuses(engine, sub) == [("subscription_start", "paid")], 60, what="first invoice paid")

    DatabaseClock(engine, JAN_1).advance(timedelta(days=31, seconds=1))
    wait_until(lambda: statuses(engine, sub) == [("subscription_start", "paid"), ("period_close", "paid")], 60,
               what="period closed by the scheduler and paid")
    with engine.connect() as conn:
        row = conn.execute(sa.select(subscriptions).where(subscriptions.c.subscription_id == sub)).one()
    assert (row.status, row.current_period_start) == ("active", datetime(2026, 2, 1, tzinfo=UTC))


def test_a_declined_card_makes_the_subscription_past_due_and_announces_the_failure_for_dunning(
        simulated: Settings, engine: sa.Engine, running_worker: None) -> None:
    sub = f"sub_{uuid.uuid4().hex[:10]}"
    send(simulated, CreateSubscription(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="pro",
                                       currency="USD", payment_method_id="pm_card_chargeDeclinedInsufficientFunds"))

    def past_due() -> bool:
        with engine.connect() as conn:
            return conn.execute(sa.select(subscriptions.c.status).where(
                subscriptions.c.subscription_id == sub)).scalar_one_or_none() == "past_due"
    wait_until(past_due, 60, what="subscription past due")
    consumer = Consumer(simulated.kafka_consumer_config(f"probe-{uuid.uuid4().hex}"))
    consumer.subscribe([simulated.topic(topics.BILLING_EVENTS)])
    seen: list[tuple[str, dict[str, object]]] = []
    try:
        def failure_seen() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.key() == sub.encode():
                env = Envelope.from_bytes(msg.value())
                seen.append((env.type, env.payload))
            return any(t == "invoice.payment_failed" for t, _ in seen)
        wait_until(failure_seen, 60, interval=0, what="invoice.payment_failed on billing-events")
    finally:
        consumer.close()
    [failure] = [p for t, p in seen if t == "invoice.payment_failed"]
    assert (failure["decline_code"], failure["hard_decline"], failure["attempt_no"]) == (
        "insufficient_funds", False, 1)


def test_one_scheduler_holds_the_lock_and_a_second_one_waits(simulated: Settings, engine: sa.Engine) -> None:
    clock = DatabaseClock(engine, JAN_1)
    # Another environment's lock (another schema name), so the running worker's scheduler is not involved.
    other = simulated.model_copy(update={"database_schema": f"lock_test_{uuid.uuid4().hex[:8]}"})
    first, second = Scheduler(other, engine, clock), Scheduler(other, engine, clock)
    try:
        assert first.acquire() or second.acquire()
        assert not (first.acquire() and second.acquire())
    finally:
        first.stop()
        second.stop()


def test_a_period_close_waits_for_the_grace_period_so_backlogged_usage_reaches_its_own_invoice(
        simulated: Settings, engine: sa.Engine) -> None:
    sub = f"sub_grace_{uuid.uuid4().hex[:8]}"
    period_end = datetime(2030, 1, 20, tzinfo=UTC)  # beyond the running worker's clock: only due() sees it
    with engine.begin() as conn:
        conn.execute(subscriptions.insert().values(
            subscription_id=sub, customer_id=f"cus_{sub}", plan_id="pro", status="active", seats=1,
            currency="USD", anchor_day=20, started_at=period_end - timedelta(days=31),
            current_period_start=period_end - timedelta(days=31), current_period_end=period_end))
    graceful = simulated.model_copy(update={"period_close_grace_s": 3600.0})
    scheduler, prompt = Scheduler(graceful, engine, DatabaseClock(engine, JAN_1)), Scheduler(
        simulated, engine, DatabaseClock(engine, JAN_1))

    def closes(s: Scheduler, at: datetime) -> list[str]:
        return [d.subscription_id for d in s.due(at, 10_000) if d.kind == "period.close" and d.subscription_id == sub]

    assert closes(prompt, period_end) == [sub]  # no grace (the default): due at the period end
    assert closes(scheduler, period_end + timedelta(minutes=59)) == []
    assert closes(scheduler, period_end + timedelta(minutes=60)) == [sub]
