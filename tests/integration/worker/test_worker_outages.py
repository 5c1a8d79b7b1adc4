"""The worker rides out a PostgreSQL or Kafka outage with no manual action: its consumer, commit lanes, outbox
relay, payment executor and scheduler keep retrying while the dependency is stopped, /readyz says 503 naming it
meanwhile, and afterwards everything produced is applied exactly once and readiness is back.

The stopped component is a private instance (tests/outage_support.py); the shared stack is never stopped. The
outage here lasts a few seconds; the 60 s version belongs to `make chaos`.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from shared.adapters.kafka.admin import create_topics, delete_topics
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.engine import make_engine
from shared.adapters.postgres.schema.billing import invoices, payment_attempts
from shared.adapters.postgres.schema.core import command_outcomes, outbox
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import CreateSubscription
from tests.integration.worker.harness import (
    UsageLedger,
    WorkerProcess,
    caught_up,
    materialised,
    wait_until,
    worker_thread,
)
from tests.outage_support import PrivateKafka, PrivatePostgres, free_port, private_kafka, private_postgres

pytestmark = pytest.mark.integration

# A few seconds inside `make test`; BILLING_TEST_OUTAGE_S=60 runs the same scenarios for a minute.
OUTAGE_S = float(os.environ.get("BILLING_TEST_OUTAGE_S", "6"))
CONSUMED = (topics.USAGE, topics.COMMANDS, topics.PAYMENTS)


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as pg:
        yield pg


@pytest.fixture(scope="module")
def outage_settings(endpoints, topic_prefix: str, pg: PrivatePostgres) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(kafka_bootstrap=endpoints.kafka_bootstrap, database_url=pg.url, database_schema=pg.migrate(),
                    topic_prefix=topic_prefix, stripe_api_base=endpoints.stripe_api_base,
                    consumer_group=f"g-{uuid.uuid4().hex[:8]}", log_json=False, worker_health_port=free_port())


def readiness(settings: Settings) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{settings.worker_health_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def subscribe(sub: str) -> Envelope:
    payload = CreateSubscription(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="pro", currency="USD",
                                 payment_method_id="pm_card_visa")
    return new_envelope("subscription.create", payload.model_dump(mode="json"), producer="test",
                        occurred_at=datetime.now(UTC))


def test_the_worker_rides_out_a_postgres_outage_and_applies_everything_exactly_once(
        outage_settings: Settings, pg: PrivatePostgres) -> None:
    settings = outage_settings
    engine = make_engine(settings, pool_size=2)
    ledger = UsageLedger(settings, subscriptions=40)
    commands = KafkaProducer(settings, client_id="outage-test-commands")
    creates: list[Envelope] = []

    def create_subscriptions(count: int) -> None:
        batch = [subscribe(f"sub_{uuid.uuid4().hex[:12]}") for _ in range(count)]
        commands.send_and_wait([OutgoingMessage.of(topics.COMMANDS, e.payload["subscription_id"], e) for e in batch])
        creates.extend(batch)

    seen_during: list[tuple[int, dict[str, object]]] = []
    try:
        with worker_thread(settings):
            ledger.produce(1500)
            create_subscriptions(5)
            wait_until(lambda: caught_up(settings, engine, CONSUMED), timeout=90, what="catch-up before the outage")
            assert readiness(settings)[0] == 200

            stop_polling = threading.Event()

            def poll_readiness() -> None:
                while not stop_polling.wait(0.3):
                    seen_during.append(readiness(settings))

            poller = threading.Thread(target=poll_readiness, daemon=True)
            with pg.outage(seconds=OUTAGE_S):
                poller.start()
                ledger.produce(1500)  # consumed while the database is down: applied after it is back
                create_subscriptions(5)
            back = time.monotonic()
            stop_polling.set()
            poller.join(10)

            wait_until(lambda: caught_up(settings, engine, CONSUMED), timeout=120, what="catch-up after the outage")
            wait_until(lambda: readiness(settings)[0] == 200, timeout=30, what="/readyz 200 after the outage")
            print(f"postgres outage {OUTAGE_S:.0f} s: caught up and ready {time.monotonic() - back:.1f} s after")
            with engine.connect() as conn:
                wait_until(lambda: conn.execute(sa.select(sa.func.count()).select_from(outbox)
                                                .where(outbox.c.published_at.is_(None))).scalar_one() == 0,
                           timeout=60, what="the relay to publish every outbox row")
    finally:
        ledger.close()
        commands.close()

    assert (503, {"status": "unavailable", "checks": {"postgres": "unreachable", "kafka": "ok"}}) in seen_during
    quantity, events, rows = materialised(engine)
    assert quantity == ledger.expected_quantity  # every unit once: nothing lost, no duplicate counted
    assert events == ledger.expected_events and rows == ledger.produced
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(command_outcomes.c.command_id, command_outcomes.c.status)).all())
        start_invoices = conn.execute(sa.select(invoices.c.subscription_id, sa.func.count())
                                      .group_by(invoices.c.subscription_id)).all()
        charged_twice = conn.execute(sa.select(payment_attempts.c.invoice_id)
                                     .where(payment_attempts.c.status == "succeeded")
                                     .group_by(payment_attempts.c.invoice_id).having(sa.func.count() > 1)).all()
    engine.dispose()
    assert {statuses.get(e.event_id) for e in creates} == {"applied"}
    assert sorted(n for _, n in start_invoices) == [1] * len(creates)
    assert charged_twice == []


@pytest.fixture(scope="module")
def kafka() -> Iterator[PrivateKafka]:
    with private_kafka() as kafka:
        yield kafka


def test_the_worker_rides_out_a_kafka_outage_and_applies_everything_exactly_once(
        endpoints, database_url: str, db_schema: str, kafka: PrivateKafka) -> None:  # type: ignore[no-untyped-def]
    prefix = f"t{uuid.uuid4().hex[:10]}."
    kafka.create_topics(prefix)
    settings = Settings(kafka_bootstrap=kafka.bootstrap, database_url=database_url, database_schema=db_schema,
                        topic_prefix=prefix, stripe_api_base=endpoints.stripe_api_base,
                        consumer_group=f"g-{uuid.uuid4().hex[:8]}", log_json=False, worker_health_port=free_port())
    engine = make_engine(settings, pool_size=2)
    ledger = UsageLedger(settings, subscriptions=40)
    commands = KafkaProducer(settings, client_id="outage-test-commands")
    creates: list[Envelope] = []

    def create_subscriptions(count: int) -> None:
        batch = [subscribe(f"sub_{uuid.uuid4().hex[:12]}") for _ in range(count)]
        commands.send_and_wait([OutgoingMessage.of(topics.COMMANDS, e.payload["subscription_id"], e) for e in batch])
        creates.extend(batch)

    seen_during: list[tuple[int, dict[str, object]]] = []
    try:
        with worker_thread(settings):
            ledger.produce(1500)
            create_subscriptions(5)  # their invoices are charged and announced while the broker is down
            stop_polling = threading.Event()

            def poll_readiness() -> None:
                while not stop_polling.wait(0.3):
                    seen_during.append(readiness(settings))

            poller = threading.Thread(target=poll_readiness, daemon=True)
            with kafka.outage(seconds=OUTAGE_S):
                poller.start()
            back = time.monotonic()
            stop_polling.set()
            poller.join(10)
            ledger.produce(1500)
            create_subscriptions(5)

            wait_until(lambda: caught_up(settings, engine, CONSUMED), timeout=120, what="catch-up after the outage")
            wait_until(lambda: readiness(settings)[0] == 200, timeout=30, what="/readyz 200 after the outage")
            print(f"kafka outage {OUTAGE_S:.0f} s: caught up and ready {time.monotonic() - back:.1f} s after")
            with engine.connect() as conn:
                wait_until(lambda: conn.execute(sa.select(sa.func.count()).select_from(outbox)
                                                .where(outbox.c.published_at.is_(None))).scalar_one() == 0,
                           timeout=60, what="the relay to publish every outbox row")
    finally:
        ledger.close()
        commands.close()

    assert (503, {"status": "unavailable", "checks": {"postgres": "ok", "kafka": "unreachable"}}) in seen_during
    quantity, events, rows = materialised(engine)
    assert quantity == ledger.expected_quantity
    assert events == ledger.expected_events and rows == ledger.produced
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(command_outcomes.c.command_id, command_outcomes.c.status)).all())
        start_invoices = conn.execute(sa.select(invoices.c.subscription_id, sa.func.count())
                                      .group_by(invoices.c.subscription_id)).all()
        charged_twice = conn.execute(sa.select(payment_attempts.c.invoice_id)
                                     .where(payment_attempts.c.status == "succeeded")
                                     .group_by(payment_attempts.c.invoice_id).having(sa.func.count() > 1)).all()
    engine.dispose()
    assert {statuses.get(e.event_id) for e in creates} == {"applied"}
    assert sorted(n for _, n in start_invoices) == [1] * len(creates)
    assert charged_twice == []


def test_a_worker_started_while_postgres_is_down_waits_for_it_and_then_runs(
        outage_settings: Settings, pg: PrivatePostgres, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The simulated clock is read while the worker is built: before, the process exited at once. Topics of its
    # own: the other tests' backlog is no business of this one.
    prefix = f"t{uuid.uuid4().hex[:10]}."
    create_topics(outage_settings.kafka_bootstrap, prefix=prefix, partitions=3)
    # NOTE: built anew, not model_copy(update=...): that would keep the cached search_path of the old schema.
    settings = Settings(**{**outage_settings.model_dump(), "database_schema": pg.migrate(), "clock": "simulated",
                           "consumer_group": f"g-{uuid.uuid4().hex[:8]}", "worker_health_port": None,
                           "topic_prefix": prefix})
    command = subscribe(f"sub_{uuid.uuid4().hex[:12]}")
    producer = KafkaProducer(settings, client_id="outage-test-commands")
    producer.send_and_wait([OutgoingMessage.of(topics.COMMANDS, command.payload["subscription_id"], command)])
    producer.close()
    worker = WorkerProcess(settings, log_path=tmp_path / "worker.log")
    try:
        with pg.outage(seconds=OUTAGE_S):
            worker.start()
            wait_until(lambda: b"waiting for the database" in (tmp_path / "worker.log").read_bytes()
                       or not worker.running, timeout=60, what="the worker to wait or exit")
            assert worker.running, (tmp_path / "worker.log").read_text()[-3000:]
        engine = make_engine(settings, pool_size=1)
        with engine.connect() as conn:
            wait_until(lambda: conn.execute(sa.select(command_outcomes.c.command_id).where(
                command_outcomes.c.command_id == command.event_id)).first() is not None,
                timeout=90, what="the command's outcome once the database is back")
            outcome = conn.execute(sa.select(command_outcomes).where(
                command_outcomes.c.command_id == command.event_id)).one()
        engine.dispose()
        assert outcome.status == "applied", outcome
    finally:
        assert worker.stop() == 0
        delete_topics(outage_settings.kafka_bootstrap, prefix)
