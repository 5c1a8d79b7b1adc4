"""A long clock jump applies what is due in billing-time order (issue 12, defect 8).

The real billing worker (scheduler, executor, relay) runs in this process and the dunning service as a
process, on the simulated clock. A subscription's first charge fails, dunning opens its case, then the
clock jumps 31 days at once, past dunning's retries (days 3, 5, 7) and give-up (day 14) and past the
period end (day 31). Before the fix the scheduler closed the period at once and the doomed subscription
was billed another month, while dunning gave up on day 31 without a single retry.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.adapters.clock import DatabaseClock
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.schema.billing import invoices, subscriptions
from shared.adapters.postgres.schema.core import outbox
from shared.adapters.postgres.schema.dunning import dunning_cases
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import CreateSubscription
from tests.integration.dunning.test_service_process import DunningProcess
from tests.integration.worker.harness import wait_until, worker_thread

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
ONE_JUMP = timedelta(days=31, hours=1)


@pytest.fixture(scope="module")
def simulated(settings: Settings) -> Settings:
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": JAN_1.isoformat(),
                                       "scheduler_interval_s": 0.2, "payment_gateway": "simulated",
                                       "notifier": "log"})


@pytest.fixture(scope="module")
def running(simulated: Settings, engine: sa.Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    DatabaseClock(engine, JAN_1).ensure()
    dunning = DunningProcess({**os.environ, **simulated.to_env(), "BILLING_LOG_JSON": "false"},
                             tmp_path_factory.mktemp("dunning") / "dunning.log")
    dunning.start()
    try:
        with worker_thread(simulated):
            yield
    finally:
        dunning.stop()


def subscribe(settings: Settings, payment_method: str) -> str:
    sub = f"sub_{uuid.uuid4().hex[:10]}"
    command = CreateSubscription(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="pro", currency="USD",
                                 payment_method_id=payment_method)
    producer = KafkaProducer(settings, client_id="test-clock-ordering")
    producer.send_and_wait([OutgoingMessage.of(topics.COMMANDS, sub, new_envelope(
        "subscription.create", command.model_dump(mode="json"), producer="test", occurred_at=JAN_1))])
    producer.close()
    return sub


def invoices_of(engine: sa.Engine, sub: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(r.kind, r.status) for r in conn.execute(
            sa.select(invoices.c.kind, invoices.c.status).where(invoices.c.subscription_id == sub)
            .order_by(invoices.c.number_seq))]


def status_of(engine: sa.Engine, sub: str) -> str | None:
    with engine.connect() as conn:
        status: str | None = conn.execute(sa.select(subscriptions.c.status).where(
            subscriptions.c.subscription_id == sub)).scalar_one_or_none()
    return status


def case_status(engine: sa.Engine, sub: str) -> str | None:
    """The status of the subscription's first dunning case (its first invoice's)."""
    with engine.connect() as conn:
        status: str | None = conn.execute(sa.select(dunning_cases.c.status).where(
            dunning_cases.c.subscription_id == sub).order_by(dunning_cases.c.opened_at).limit(1)).scalar()
    return status


def dunning_commands(engine: sa.Engine, sub: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(outbox.c.event_type).where(
            outbox.c.topic == topics.COMMANDS, outbox.c.message_key == sub).order_by(outbox.c.id)).scalars())


def test_one_jump_past_the_give_up_and_the_period_end_cancels_the_doomed_subscription_without_billing_it(
        simulated: Settings, engine: sa.Engine, running: None) -> None:
    sub = subscribe(simulated, "pm_card_chargeDeclinedInsufficientFunds")
    wait_until(lambda: case_status(engine, sub) == "open", 90, what="dunning case opened for the failed charge")

    DatabaseClock(engine, JAN_1).advance(ONE_JUMP)

    wait_until(lambda: status_of(engine, sub) == "cancelled", 180, what="dunning's give-up cancels it")
    wait_until(lambda: invoices_of(engine, sub)[0] == ("subscription_start", "uncollectible"), 30,
               what="the invoice marked uncollectible")
    time.sleep(2)  # many scheduler ticks after the cancellation
    assert invoices_of(engine, sub) == [("subscription_start", "uncollectible")]
    assert dunning_commands(engine, sub) == ["payment.retry", "payment.retry", "payment.retry", "dunning.give_up"]
    assert case_status(engine, sub) == "given_up"


def test_after_one_jump_a_day_three_retry_that_succeeds_lets_the_period_close_bill_normally(
        simulated: Settings, engine: sa.Engine, running: None) -> None:
    sub = subscribe(simulated, "pm_sim_decline_then_succeed")
    wait_until(lambda: case_status(engine, sub) == "open", 90, what="dunning case opened for the failed charge")

    DatabaseClock(engine, JAN_1).advance(ONE_JUMP)

    wait_until(lambda: ("period_close", "open") in invoices_of(engine, sub)
               or ("period_close", "paid") in invoices_of(engine, sub), 180, what="the period close billed")
    assert invoices_of(engine, sub)[0] == ("subscription_start", "paid")
    assert dunning_commands(engine, sub)[0] == "payment.retry"
    assert "dunning.give_up" not in dunning_commands(engine, sub)
    assert case_status(engine, sub) == "recovered"
    assert status_of(engine, sub) != "cancelled"


def test_the_scheduler_logs_a_database_outage_once_not_once_per_tick(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from services.billing_worker.entrypoints.scheduler import Scheduler
    from shared.adapters.postgres.engine import make_engine
    from tests.outage_support import free_port

    unreachable = settings.model_copy(update={
        "database_url": f"postgresql+psycopg://billing:billing@127.0.0.1:{free_port()}/billing"})
    engine = make_engine(unreachable, pool_size=1)
    scheduler = Scheduler(unreachable, engine, DatabaseClock(engine, JAN_1), interval_s=0.05)
    caplog.set_level(logging.INFO, logger="billing_worker.scheduler")
    scheduler.start()
    wait_until(lambda: "scheduler waits for PostgreSQL/Kafka" in caplog.text, 30, what="the outage logged")
    time.sleep(1.0)  # ~20 more ticks against the dead database
    scheduler.stop()
    engine.dispose()
    # Only the scheduler's lines: other threads of the process (a payment executor) may log meanwhile.
    said = [r.getMessage() for r in caplog.records if r.name == "billing_worker.scheduler"]
    assert said == ["scheduler waits for PostgreSQL/Kafka"]
