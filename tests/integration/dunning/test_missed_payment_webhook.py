"""A payment we never heard of, end to end on real Kafka and PostgreSQL: the billing worker (in this process)
charges a new subscription's invoice, the card is declined, the dunning service (its own process) opens a
case; the customer then pays the PaymentIntent at the provider and no webhook arrives. The dunning
service's reconciliation finds the payment, the worker marks the invoice paid exactly once, the case
closes, and no retry is ever commanded for it, even once the retry days have passed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from services.dunning.reconciliation import PaymentReconciler
from shared.adapters.clock import DatabaseClock
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.adapters.payments.simulated import PostgresProviderRecord, SimulatedGateway
from shared.adapters.postgres.schema.billing import (
    invoices,
    payment_attempts,
    simulated_gateway_charges,
    subscriptions,
)
from shared.adapters.postgres.schema.core import outbox
from shared.adapters.postgres.schema.dunning import dunning_cases
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import CreateSubscription
from tests.integration.worker.harness import worker_thread

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def simulated(settings: Settings) -> Settings:
    return settings.model_copy(update={"clock": "simulated", "simulated_clock_start": JAN_1.isoformat(),
                                       "scheduler_interval_s": 0.2, "payment_gateway": "simulated",
                                       "notifier": "log"})


@pytest.fixture(scope="module")
def running_worker(simulated: Settings) -> Iterator[None]:
    with worker_thread(simulated):
        yield


@pytest.fixture(scope="module")
def dunning_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dunning") / "dunning.log"


@pytest.fixture(scope="module")
def dunning_service(simulated: Settings, dunning_log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **simulated.to_env(), "BILLING_LOG_JSON": "false", "BILLING_LOG_LEVEL": "INFO"}
    with dunning_log.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.dunning"], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_for(what: str, predicate: Callable[[], Any], service: subprocess.Popen[bytes], log: Path,
             timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert service.poll() is None, f"dunning died while waiting for {what}:\n{log.read_text()[-6000:]}"
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text(errors='replace')[-6000:]}")


class Subscription:
    """One subscription's view of the shared tables, for the assertions."""

    def __init__(self, engine: sa.Engine, subscription_id: str) -> None:
        self.engine = engine
        self.id = subscription_id

    def invoice(self) -> sa.Row[Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(invoices).where(invoices.c.subscription_id == self.id)).one_or_none()

    def case_status(self) -> str | None:
        with self.engine.connect() as conn:
            status: str | None = conn.execute(sa.select(dunning_cases.c.status).where(
                dunning_cases.c.subscription_id == self.id)).scalar_one_or_none()
        return status

    def outbox(self, topic: str) -> list[tuple[str, dict[str, Any]]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox.c.event_type, outbox.c.envelope).where(
                outbox.c.topic == topic, outbox.c.message_key == self.id).order_by(outbox.c.id)).all()
        return [(row.event_type, row.envelope["payload"]) for row in rows]

    def attempts(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(payment_attempts.c.status).where(
                payment_attempts.c.subscription_id == self.id).order_by(payment_attempts.c.attempt_no)).scalars())

    def provider_charges(self, invoice_id: str) -> list[bool]:
        c = simulated_gateway_charges
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(c.c.succeeded).where(c.c.invoice_id == invoice_id)
                                     .order_by(c.c.id)).scalars())


def test_a_payment_made_at_the_provider_without_a_webhook_closes_the_dunning_case_and_stops_the_retries(
        simulated: Settings, engine: sa.Engine, running_worker: None, dunning_service: subprocess.Popen[bytes],
        dunning_log: Path) -> None:
    n = uuid.uuid4().hex[:10]
    sub = Subscription(engine, f"sub_{n}")
    create = CreateSubscription(subscription_id=sub.id, customer_id=f"cus_{n}", plan_id="pro", currency="USD",
                                payment_method_id="pm_card_chargeDeclinedInsufficientFunds")
    producer = KafkaProducer(simulated, client_id="test-missed-webhook")
    producer.send_and_wait([OutgoingMessage.of(topics.COMMANDS, sub.id, new_envelope(
        "subscription.create", create.model_dump(mode="json"), producer="test", occurred_at=JAN_1))])
    producer.close()
    wait = lambda what, predicate: wait_for(what, predicate, dunning_service, dunning_log)  # noqa: E731

    wait("a dunning case for the declined invoice", lambda: sub.case_status() == "open")
    invoice = sub.invoice()
    assert invoice is not None and invoice.status == "open"
    assert sub.attempts() == ["declined"]

    # The customer pays the invoice's PaymentIntent at the provider; no webhook ever reaches us.
    gateway = SimulatedGateway(PostgresProviderRecord(engine))
    [failure] = [p for t, p in sub.outbox(topics.PAYMENTS) if t == "payment.failed"]
    paid = gateway.pay_out_of_band(failure["provider_ref"])

    wait("the invoice paid", lambda: (i := sub.invoice()) is not None and i.status == "paid")
    wait("the dunning case closed", lambda: sub.case_status() == "recovered")

    paid_invoice = sub.invoice()
    assert paid_invoice is not None
    assert (paid_invoice.amount_paid_minor, paid_invoice.provider_ref) == (invoice.amount_due_minor,
                                                                           paid.provider_ref)
    reports = [p for t, p in sub.outbox(topics.PAYMENTS) if t == "payment.succeeded"]
    assert [(p["source"], p["invoice_id"], p["amount_minor"]) for p in reports] == [
        ("reconciliation", invoice.invoice_id, invoice.amount_due_minor)]
    assert [t for t, _ in sub.outbox(topics.BILLING_EVENTS)].count("invoice.paid") == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(subscriptions.c.status).where(
            subscriptions.c.subscription_id == sub.id)).scalar_one() == "active"

    # Past the retry days (3, 5, 7) and a few scheduler ticks: dunning commands nothing for this invoice.
    DatabaseClock(engine, JAN_1).advance(timedelta(days=8))
    time.sleep(3.0)
    assert [t for t, _ in sub.outbox(topics.COMMANDS) if t in ("payment.retry", "dunning.give_up")] == []
    assert sub.attempts() == ["declined"]
    assert sub.provider_charges(invoice.invoice_id) == [False, True]  # the decline, the out-of-band payment

    # Another pass finds nothing left to report for it.
    second = PaymentReconciler(engine, gateway, DatabaseClock(engine, JAN_1)).reconcile_open_invoices(limit=500)
    assert invoice.invoice_id not in {s.invoice_id for s in second}
    assert len([t for t, _ in sub.outbox(topics.PAYMENTS) if t == "payment.succeeded"]) == 1
