"""The dunning service as a process (`python -m services.dunning`) on real Kafka and PostgreSQL, driven by
the simulated billing clock: killed with SIGKILL and restarted mid-schedule, it neither notifies twice nor
schedules a retry twice; an `invoice.paid` event closes an open case.

The test plays the billing worker: it publishes billing events and reads the commands dunning put in the
outbox. Notifications go to a local webhook receiver that checks every signature and dedupes by event id.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.adapters.clock import DatabaseClock
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.notify.webhook import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from shared.adapters.postgres.schema.core import customers, outbox
from shared.adapters.postgres.schema.dunning import dunning_cases, dunning_inbox, dunning_notifications
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
SECRET = "test-webhook-secret"
CLOCK_START = "2026-04-01T00:00:00+00:00"


class WebhookReceiver:
    """A receiver as the webhook contract asks: verify the signature, dedupe on the event id."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, bool]] = []
        self.processed: dict[str, dict[str, Any]] = {}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                valid = verify_signature(SECRET, timestamp=self.headers[TIMESTAMP_HEADER], body=body,
                                         signature=self.headers[SIGNATURE_HEADER], now=time.time())
                event_id = self.headers[EVENT_ID_HEADER]
                receiver.deliveries.append((event_id, valid))
                if valid:
                    import orjson

                    receiver.processed.setdefault(event_id, orjson.loads(body))
                self.send_response(204 if valid else 401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/billing-notifications"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class DunningProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self._log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self._log_path.open("ab")
        log.write(f"\n===== start #{self.starts}\n".encode())
        log.flush()
        self.process = subprocess.Popen([sys.executable, "-m", "services.dunning"], cwd=REPO, env=self._env,
                                        stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, offsets and in-flight work are lost as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self) -> str:
        return self._log_path.read_text(errors="replace")[-6000:]


def wait_for(what: str, predicate: Callable[[], Any], service: DunningProcess, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert service.process is not None and service.process.poll() is None, \
            f"dunning service died while waiting for {what}:\n{service.log_tail()}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{service.log_tail()}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def clock(engine: sa.Engine) -> DatabaseClock:
    clock = DatabaseClock(engine, datetime.fromisoformat(CLOCK_START))
    clock.ensure()
    return clock


@pytest.fixture(scope="module")
def service(settings: Any, receiver: WebhookReceiver, clock: DatabaseClock,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[DunningProcess]:
    env = {**os.environ,
           "BILLING_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BILLING_DATABASE_URL": settings.database_url,
           "BILLING_DATABASE_SCHEMA": settings.database_schema, "BILLING_TOPIC_PREFIX": settings.topic_prefix,
           "BILLING_CLOCK": "simulated", "BILLING_SIMULATED_CLOCK_START": CLOCK_START,
           "BILLING_NOTIFIER": "webhook", "BILLING_NOTIFY_WEBHOOK_URL": receiver.url,
           "BILLING_NOTIFY_WEBHOOK_SECRET": SECRET, "BILLING_SCHEDULER_INTERVAL_S": "0.2",
           "BILLING_PAYMENT_GATEWAY": "simulated", "BILLING_LOG_JSON": "false", "BILLING_LOG_LEVEL": "INFO"}
    process = DunningProcess(env, tmp_path_factory.mktemp("dunning") / "dunning.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def producer(settings: Any) -> Iterator[KafkaProducer]:
    producer = KafkaProducer(settings, client_id="test-billing-worker")
    yield producer
    producer.close()


class Worker:
    """The test's stand-in for the billing worker: publishes billing events for one subscription."""

    def __init__(self, producer: KafkaProducer, engine: sa.Engine, clock: DatabaseClock) -> None:
        self.producer = producer
        self.engine = engine
        self.clock = clock
        n = uuid.uuid4().hex[:8]
        self.subscription_id, self.customer_id, self.invoice_id = f"sub_{n}", f"cus_{n}", f"in_{n}"
        with engine.begin() as conn:
            conn.execute(customers.insert().values(customer_id=self.customer_id, external_id=f"ext-{n}",
                                                   kind="user", name="Grace", email=f"grace-{n}@example.com",
                                                   currency="EUR"))

    def publish(self, type_: str, **fields: Any) -> Envelope:
        payload = {"invoice_id": self.invoice_id, "subscription_id": self.subscription_id,
                   "customer_id": self.customer_id, "status": "open", "total_minor": 4900, "currency": "EUR",
                   **fields}
        envelope = new_envelope(type_, payload, producer="billing-worker", occurred_at=self.clock.now())
        self.producer.send_and_wait([OutgoingMessage.of(topics.BILLING_EVENTS, self.subscription_id, envelope)])
        return envelope

    def commands(self) -> list[Envelope]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox.c.envelope).where(
                outbox.c.topic == topics.COMMANDS, outbox.c.message_key == self.subscription_id)
                .order_by(outbox.c.id)).scalars().all()
        return [Envelope.model_validate(row) for row in rows]

    def notifications(self) -> list[sa.Row[Any]]:
        n = dunning_notifications
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(n).where(n.c.subscription_id == self.subscription_id)
                                     .order_by(n.c.seq)).all())

    def delivered(self, key: str) -> bool:
        return any(row.action_key == key and row.status == "sent" for row in self.notifications())

    def case_status(self) -> str | None:
        with self.engine.connect() as conn:
            status: str | None = conn.execute(sa.select(dunning_cases.c.status).where(
                dunning_cases.c.invoice_id == self.invoice_id)).scalar_one_or_none()
        return status


def test_killed_and_restarted_mid_schedule_it_neither_notifies_nor_retries_twice(
        service: DunningProcess, producer: KafkaProducer, engine: sa.Engine, clock: DatabaseClock,
        receiver: WebhookReceiver) -> None:
    worker = Worker(producer, engine, clock)
    first_failure = worker.publish("invoice.payment_failed", attempt_no=1, decline_code="insufficient_funds")
    wait_for("the case to open", lambda: worker.case_status() == "open", service)

    clock.advance(timedelta(days=1))
    wait_for("the day-1 reminder to be delivered", lambda: worker.delivered("notify:1"), service)

    clock.advance(timedelta(days=2))
    wait_for("the day-3 retry", lambda: len(worker.commands()) == 1, service)
    # The day-3 reminder follows the retry's failure (never beside a retry that may pay); it may be decided
    # but not delivered yet when the service is killed.
    worker.publish("invoice.payment_failed", attempt_no=2, decline_code="insufficient_funds")
    service.kill()
    service.start()
    wait_for("the day-3 reminder to be delivered", lambda: worker.delivered("notify:3"), service)

    clock.advance(timedelta(days=2))
    service.kill()  # right after the clock moved to day 5: the retry is decided after the restart
    service.start()
    wait_for("the day-5 retry", lambda: len(worker.commands()) == 2, service)
    time.sleep(3)  # many more timer ticks on the same billing instant after the restart

    commands = worker.commands()
    assert [(c.type, c.payload["attempt_no"], c.payload["reason"]) for c in commands] == [
        ("payment.retry", 2, "scheduled"), ("payment.retry", 3, "scheduled")]
    assert len({c.event_id for c in commands}) == 2
    notifications = worker.notifications()
    assert [(row.action_key, row.status, row.channel) for row in notifications] == [
        ("notify:1", "sent", "webhook"), ("notify:3", "sent", "webhook")]
    ours = {str(row.notification_id) for row in notifications}
    assert set(receiver.processed) >= ours
    assert all(valid for event_id, valid in receiver.deliveries if event_id in ours)
    # Delivery is at-least-once with a stable id: a resend after a crash carries the same event id, so the
    # receiver, deduping on it, processes each notification once.
    assert {event_id for event_id, _ in receiver.deliveries if event_id in ours} == ours
    assert receiver.processed[str(notifications[0].notification_id)]["data"]["day"] == 1
    with engine.connect() as conn:
        applied = conn.execute(sa.select(sa.func.count()).select_from(dunning_inbox)
                               .where(dunning_inbox.c.event_id == first_failure.event_id)).scalar_one()
    assert applied == 1


def test_invoice_paid_closes_an_open_case(service: DunningProcess, producer: KafkaProducer, engine: sa.Engine,
                                          clock: DatabaseClock) -> None:
    worker = Worker(producer, engine, clock)
    worker.publish("invoice.payment_failed", attempt_no=1, decline_code="do_not_honor")
    wait_for("the case to open", lambda: worker.case_status() == "open", service)

    worker.publish("invoice.paid", status="paid")
    wait_for("the case to close", lambda: worker.case_status() == "recovered", service)

    clock.advance(timedelta(days=4))
    time.sleep(2)
    assert worker.commands() == []
    assert worker.notifications() == []
