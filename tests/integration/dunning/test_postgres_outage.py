"""The dunning service as a process rides out a PostgreSQL outage (issue 12, defect 7).

A PRIVATE PostgreSQL (tests/outage_support.py) is stopped for a few seconds while the service runs: the
schedule, notification and reconciliation timers tick against a dead database and an event arrives on
``billing-events.v1``. The service must neither crash (faust "Crashed") nor dead-letter the event: it
logs the outage once per job, retries with backoff, and carries on by itself when the database is back,
with no duplicate action or notification. The 60 s version runs in ``make chaos``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shared.adapters.clock import DatabaseClock
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.postgres.schema.dunning import dunning_inbox
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from tests.integration.dunning.test_service_process import (
    CLOCK_START,
    SECRET,
    DunningProcess,
    WebhookReceiver,
    Worker,
    wait_for,
)
from tests.outage_support import PrivatePostgres, free_port, private_postgres

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("BILLING_TEST_OUTAGE_S", "6"))  # make chaos-length runs: 60
WEB_PORT = free_port()
READYZ = f"http://127.0.0.1:{WEB_PORT}/readyz"


def readiness() -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(READYZ, timeout=2)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as pg:
        yield pg


@pytest.fixture(scope="module")
def settings(pg: PrivatePostgres, kafka_bootstrap: str, topic_prefix: str) -> Settings:
    return Settings(kafka_bootstrap=kafka_bootstrap, database_url=pg.url, database_schema=pg.migrate(),
                    topic_prefix=topic_prefix, log_json=False)


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[sa.Engine]:
    from shared.adapters.postgres.engine import make_engine

    eng = make_engine(settings, pool_size=2)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def clock(engine: sa.Engine) -> DatabaseClock:
    clock = DatabaseClock(engine, datetime.fromisoformat(CLOCK_START))
    clock.ensure()
    return clock


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def service(settings: Settings, receiver: WebhookReceiver, clock: DatabaseClock,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[DunningProcess]:
    env = {**os.environ,
           "BILLING_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BILLING_DATABASE_URL": settings.database_url,
           "BILLING_DATABASE_SCHEMA": settings.database_schema, "BILLING_TOPIC_PREFIX": settings.topic_prefix,
           "BILLING_CLOCK": "simulated", "BILLING_SIMULATED_CLOCK_START": CLOCK_START,
           "BILLING_NOTIFIER": "webhook", "BILLING_NOTIFY_WEBHOOK_URL": receiver.url,
           "BILLING_NOTIFY_WEBHOOK_SECRET": SECRET, "BILLING_SCHEDULER_INTERVAL_S": "0.2",
           "BILLING_PAYMENT_GATEWAY": "simulated", "BILLING_LOG_JSON": "false", "BILLING_LOG_LEVEL": "INFO",
           "BILLING_DUNNING_WEB_PORT": str(WEB_PORT)}
    process = DunningProcess(env, tmp_path_factory.mktemp("dunning-outage") / "dunning.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def producer(settings: Settings) -> Iterator[KafkaProducer]:
    producer = KafkaProducer(settings, client_id="test-billing-worker")
    yield producer
    producer.close()


def publish_without_database(worker: Worker, at: datetime, type_: str, **fields: Any) -> Envelope:
    """``Worker.publish`` without reading the billing clock (the database is down)."""
    payload = {"invoice_id": worker.invoice_id, "subscription_id": worker.subscription_id,
               "customer_id": worker.customer_id, "status": "open", "total_minor": 4900, "currency": "EUR",
               **fields}
    envelope = new_envelope(type_, payload, producer="billing-worker", occurred_at=at)
    worker.producer.send_and_wait([OutgoingMessage.of(topics.BILLING_EVENTS, worker.subscription_id, envelope)])
    return envelope


def test_a_postgres_outage_is_ridden_out_without_losing_or_repeating_anything(
        pg: PrivatePostgres, service: DunningProcess, producer: KafkaProducer, engine: sa.Engine,
        clock: DatabaseClock) -> None:
    before = Worker(producer, engine, clock)
    before.publish("invoice.payment_failed", attempt_no=1, decline_code="insufficient_funds")
    wait_for("the first case to open", lambda: before.case_status() == "open", service)
    assert wait_for("readiness", lambda: readiness()[0] == 200, service)
    during = Worker(producer, engine, clock)  # its customer row is written before the outage
    during_at = clock.now()
    engine.dispose()

    with pg.outage(seconds=OUTAGE_S):
        time.sleep(1.0)  # every timer has ticked against the dead database
        arrived = publish_without_database(during, during_at, "invoice.payment_failed", attempt_no=1,
                                           decline_code="insufficient_funds")
        assert service.process is not None and service.process.poll() is None, service.log_tail()
        # Readiness reports the outage, naming the jobs that wait for the database.
        status, body = wait_for("readiness to report the outage", lambda: readiness()[0] == 503 and readiness(),
                                service)
        assert status == 503 and body["status"] == "unavailable"
        assert body["jobs"]["schedule"]["outage"] is True

    # Back: the event that arrived during the outage is applied, not dead-lettered, and the schedule
    # resumes by itself.
    wait_for("the case of the event sent during the outage", lambda: during.case_status() == "open", service,
             timeout=60)
    clock.advance(timedelta(days=3))
    for worker in (before, during):
        wait_for("the day-3 retry", lambda w=worker: len(w.commands()) == 1, service)  # type: ignore[misc]
        # the day-3 reminder follows the retry's failure (it never goes out beside a retry that may pay)
        worker.publish("invoice.payment_failed", attempt_no=2, decline_code="insufficient_funds")
        wait_for("the day-3 reminder", lambda w=worker: w.delivered("notify:3"), service)  # type: ignore[misc]
    time.sleep(1.5)  # more ticks on the same instant

    assert readiness() == (200, {"status": "ready"})
    for worker in (before, during):
        assert [(c.type, c.payload["attempt_no"]) for c in worker.commands()] == [("payment.retry", 2)]
        assert [(row.action_key, row.status) for row in worker.notifications()] == [
            ("notify:1", "sent"), ("notify:3", "sent")]
    with engine.connect() as conn:
        applied = conn.execute(sa.select(sa.func.count()).select_from(dunning_inbox)
                               .where(dunning_inbox.c.event_id == arrived.event_id)).scalar_one()
    assert applied == 1
    log = service._log_path.read_text(errors="replace")
    assert "dead-lettered" not in log
    assert "Crashed" not in log
    # One warning per job and outage, not one per tick (the timers tick every 0.2 s).
    began = re.findall(r"PostgreSQL unreachable; (\S+) waits for it", log)
    assert began and len(began) == len(set(began)), began
    assert "back after" in log
