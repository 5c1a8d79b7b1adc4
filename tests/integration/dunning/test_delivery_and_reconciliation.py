"""Notification delivery after commit, the notifications read side, and reconciliation of unknown payment
outcomes through the PaymentGateway port, on real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from services.dunning.dispatch import NotificationDispatcher
from services.dunning.handlers import DunningHandlers
from services.dunning.reconciliation import PaymentAttemptReader, PaymentReconciler
from services.dunning.repository import PostgresDunningStore, PostgresNotificationQueue
from shared.adapters.clock import ManualClock
from shared.adapters.notify.history import InvalidCursorError, list_notifications
from shared.adapters.notify.webhook import EVENT_ID_HEADER, WebhookNotifier
from shared.adapters.payments.port import ChargeRequest
from shared.adapters.payments.simulated import PostgresProviderRecord, SimulatedGateway
from shared.adapters.postgres.schema.billing import INVOICE_KINDS, invoices, payment_attempts
from shared.adapters.postgres.schema.core import customers, outbox
from shared.adapters.postgres.schema.dunning import dunning_notifications
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from shared.domain.dunning import DunningPolicy
from shared.domain.money import Money

pytestmark = pytest.mark.integration

NOW = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


def hard_decline_for_a_new_customer(engine: sa.Engine) -> tuple[str, str]:
    """Let the handlers decide one notice (a hard decline notifies at once); returns (customer, invoice)."""
    n = uuid.uuid4().hex[:8]
    customer_id, invoice_id = f"cus_{n}", f"in_{n}"
    with engine.begin() as conn:
        conn.execute(customers.insert().values(customer_id=customer_id, external_id=f"ext-{n}", kind="org",
                                               name="Acme", email=f"billing-{n}@acme.test", currency="USD"))
    policy = DunningPolicy()
    handlers = DunningHandlers(PostgresDunningStore(engine, policy, PaymentAttemptReader()), ManualClock(NOW),
                               policy=policy, channel="webhook")
    handlers.handle(new_envelope("invoice.payment_failed", {
        "invoice_id": invoice_id, "subscription_id": f"sub_{n}", "customer_id": customer_id, "status": "open",
        "total_minor": 2000, "currency": "USD", "decline_code": "lost_card", "hard_decline": True,
        "attempt_no": 1}, producer="billing-worker", occurred_at=NOW))
    return customer_id, invoice_id


def webhook(statuses: list[int], seen: list[str]) -> WebhookNotifier:
    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers[EVENT_ID_HEADER])
        return httpx.Response(statuses[min(len(seen), len(statuses)) - 1])

    async def no_sleep(_: float) -> None:
        return None

    return WebhookNotifier("https://hooks.acme.test/billing", "s", max_attempts=1, sleep=no_sleep,
                           client=httpx.AsyncClient(transport=httpx.MockTransport(respond)))


def status_of(engine: sa.Engine, customer_id: str) -> tuple[str, int, str | None]:
    n = dunning_notifications
    with engine.connect() as conn:
        row = conn.execute(sa.select(n.c.status, n.c.attempts, n.c.last_error)
                           .where(n.c.customer_id == customer_id)).one()
    return row.status, row.attempts, row.last_error


async def test_a_decided_notification_is_delivered_once_and_marked_sent(engine: sa.Engine) -> None:
    customer_id, _ = hard_decline_for_a_new_customer(engine)
    seen: list[str] = []
    dispatcher = NotificationDispatcher(PostgresNotificationQueue(engine), webhook([204], seen))

    await dispatcher.deliver_due()
    await dispatcher.deliver_due()

    with engine.connect() as conn:
        page = list_notifications(conn, customer_id=customer_id)
    [sent] = page.items
    assert seen == [str(sent.notification_id)]
    assert (sent.status, sent.attempts, sent.kind, sent.channel) == ("sent", 1, "payment_method_required", "webhook")
    assert sent.recipient is not None and sent.recipient.endswith("@acme.test")
    assert sent.decided_at == NOW
    assert sent.delivered_at is not None


async def test_a_failed_delivery_is_retried_later_and_a_refused_one_is_given_up(engine: sa.Engine) -> None:
    customer_id, _ = hard_decline_for_a_new_customer(engine)
    queue = PostgresNotificationQueue(engine)
    seen: list[str] = []

    await NotificationDispatcher(queue, webhook([503], seen), first_retry_delay=timedelta(0)).deliver_due()
    status, attempts, error = status_of(engine, customer_id)
    assert (status, attempts) == ("pending", 1)
    assert error is not None and "503" in error

    await NotificationDispatcher(queue, webhook([410], seen)).deliver_due()
    status, attempts, error = status_of(engine, customer_id)
    assert (status, attempts) == ("failed", 2)
    assert error is not None and "410" in error


def test_notifications_are_listed_newest_first_per_customer_with_a_cursor(engine: sa.Engine) -> None:
    customer_id, _ = hard_decline_for_a_new_customer(engine)
    other_customer, _ = hard_decline_for_a_new_customer(engine)
    with engine.begin() as conn:  # a second notice for the first customer
        first = conn.execute(sa.select(dunning_notifications)
                             .where(dunning_notifications.c.customer_id == customer_id)).one()
        values = {**first._asdict(), "notification_id": uuid.uuid4(), "action_key": "notify:1",
                  "kind": "payment_failed"}
        del values["seq"]
        conn.execute(dunning_notifications.insert().values(**values))

    with engine.connect() as conn:
        page_one = list_notifications(conn, customer_id=customer_id, limit=1)
        assert page_one.next_cursor is not None
        page_two = list_notifications(conn, customer_id=customer_id, cursor=page_one.next_cursor, limit=1)
        everyone = list_notifications(conn, limit=500)
        with pytest.raises(InvalidCursorError):
            list_notifications(conn, cursor="drop table")

    assert [item.kind for item in page_one.items + page_two.items] == ["payment_failed", "payment_method_required"]
    assert page_two.next_cursor is None
    assert {item.customer_id for item in everyone.items} >= {customer_id, other_customer}


def attempt_with_unknown_outcome(engine: sa.Engine) -> tuple[str, str, str]:
    n = uuid.uuid4().hex[:8]
    invoice_id, subscription_id, key = f"in_{n}", f"sub_{n}", f"idem_{n}"
    with engine.begin() as conn:
        conn.execute(invoices.insert().values(
            invoice_id=invoice_id, subscription_id=subscription_id, customer_id=f"cus_{n}", kind=INVOICE_KINDS[0],
            period_start=NOW - timedelta(days=30), period_end=NOW, status="open", number=f"INV-{n}",
            currency="USD", total_minor=2000, amount_due_minor=2000))
        conn.execute(payment_attempts.insert().values(
            attempt_id=f"att_{n}", invoice_id=invoice_id, attempt_no=1, subscription_id=subscription_id,
            customer_id=f"cus_{n}", amount_minor=2000, currency="USD", idempotency_key=key, status="unknown",
            requested_at=NOW))
    return invoice_id, subscription_id, key


def published_outcomes(engine: sa.Engine, subscription_id: str) -> list[Envelope]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.envelope).where(
            outbox.c.topic == topics.PAYMENTS, outbox.c.message_key == subscription_id)).scalars().all()
    return [Envelope.model_validate(row) for row in rows]


def test_reconciliation_reports_a_charge_the_provider_made_as_succeeded_once(engine: sa.Engine) -> None:
    invoice_id, subscription_id, key = attempt_with_unknown_outcome(engine)
    gateway = SimulatedGateway(PostgresProviderRecord(engine))
    lost = gateway.charge(ChargeRequest(invoice_id=invoice_id, amount=Money(2000, "USD"), customer_id="cus_x",
                                        payment_method_id="pm_sim_timeout_after_success", idempotency_key=key))
    assert not lost.is_final
    reconciler = PaymentReconciler(engine, gateway, ManualClock(NOW))

    settled = [s for s in reconciler.run_once() if s.invoice_id == invoice_id]
    reconciler.run_once()  # the worker has not applied it yet: looked up again, published once

    assert [s.status for s in settled] == ["succeeded"]
    [outcome] = published_outcomes(engine, subscription_id)
    assert outcome.type == "payment.succeeded"
    assert outcome.payload["source"] == "reconciliation"
    assert (outcome.payload["invoice_id"], outcome.payload["amount_minor"]) == (invoice_id, 2000)


def test_reconciliation_reports_an_attempt_the_provider_never_saw_as_not_charged(engine: sa.Engine) -> None:
    invoice_id, subscription_id, _ = attempt_with_unknown_outcome(engine)
    reconciler = PaymentReconciler(engine, SimulatedGateway(PostgresProviderRecord(engine)), ManualClock(NOW))

    settled = [s for s in reconciler.run_once() if s.invoice_id == invoice_id]

    assert [s.status for s in settled] == ["not_charged"]
    [outcome] = published_outcomes(engine, subscription_id)
    assert outcome.type == "payment.failed"
    assert outcome.payload["decline_code"] is None
