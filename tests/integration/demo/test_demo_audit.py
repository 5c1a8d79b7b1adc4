"""The demo's audit on real PostgreSQL: a paid invoice is backed by exactly one succeeded attempt of ours or,
when none succeeded (a payment learned from the provider: webhook or reconciliation), by the provider's
payment reference recorded on the invoice; every payment the provider took is on its paid invoice; and the
summary counts the invoices recovered by reconciliation. Each test writes in a transaction it rolls back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.demo.audit import count_violations, invoices_recovered_by_reconciliation
from shared.adapters.postgres.schema.billing import (
    invoices,
    payment_attempts,
    simulated_gateway_charges,
)
from shared.adapters.postgres.schema.core import outbox
from shared.contracts import topics

pytestmark = pytest.mark.integration

PAID_IN_FULL_ONCE = "every_paid_invoice_is_paid_in_full_once"
ON_ITS_INVOICE = "every_payment_taken_at_the_provider_is_on_its_invoice"
JAN_6 = datetime(2026, 1, 6, 23, 0, tzinfo=UTC)


@pytest.fixture
def conn(demo_engine: sa.Engine) -> Iterator[sa.Connection]:
    with demo_engine.connect() as connection:
        transaction = connection.begin()
        yield connection
        transaction.rollback()


class Books:
    """Writes one invoice's rows the way the worker, the provider and the reconciler would."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        n = uuid.uuid4().hex[:10]
        self.invoice_id, self.subscription_id, self.customer_id = f"in_{n}", f"sub_{n}", f"cus_{n}"
        self.intent = f"pi_sim_{n}"
        self.attempts = 0

    def invoice(self, *, status: str = "paid", total_minor: int = 2900, paid_minor: int | None = None,
                provider_ref: str | None = None) -> Books:
        paid = status == "paid"
        self.conn.execute(invoices.insert().values(
            invoice_id=self.invoice_id, subscription_id=self.subscription_id, customer_id=self.customer_id,
            kind="subscription_start", period_start=JAN_6 - timedelta(days=6), period_end=JAN_6 + timedelta(days=25),
            status=status, number=f"INV-{self.invoice_id}", currency="USD", total_minor=total_minor,
            amount_due_minor=max(total_minor, 0),
            amount_paid_minor=(total_minor if paid_minor is None else paid_minor) if paid else 0,
            provider_ref=provider_ref, paid_at=JAN_6 if paid else None))
        return self

    def attempt(self, status: str) -> Books:
        self.attempts += 1
        self.conn.execute(payment_attempts.insert().values(
            attempt_id=f"att_{self.invoice_id}_{self.attempts}", invoice_id=self.invoice_id,
            attempt_no=self.attempts, subscription_id=self.subscription_id, customer_id=self.customer_id,
            amount_minor=2900, currency="USD", idempotency_key=f"key_{self.invoice_id}_{self.attempts}",
            status=status, provider_ref=self.intent, requested_at=JAN_6))
        return self

    def provider_charge(self, *, succeeded: bool, amount_minor: int = 2900, key: str | None = None) -> Books:
        self.conn.execute(simulated_gateway_charges.insert().values(
            idempotency_key=key or f"key_{self.invoice_id}_{uuid.uuid4().hex[:6]}", invoice_id=self.invoice_id,
            customer_id=self.customer_id, payment_method_id="pm_card_visa", provider_ref=self.intent,
            succeeded=succeeded, amount_minor=amount_minor, currency="USD",
            decline_code=None if succeeded else "insufficient_funds"))
        return self

    def reconciliation_report(self) -> Books:
        payload = {"subscription_id": self.subscription_id, "invoice_id": self.invoice_id, "attempt_id": None,
                   "provider_ref": self.intent, "amount_minor": 2900, "currency": "USD",
                   "source": "reconciliation", "paid_at": JAN_6.isoformat()}
        self.conn.execute(outbox.insert().values(
            topic=topics.PAYMENTS, message_key=self.subscription_id, event_id=uuid.uuid4(),
            event_type="payment.succeeded", envelope={"type": "payment.succeeded", "payload": payload}))
        return self


def test_an_invoice_paid_by_one_succeeded_attempt_of_ours_holds(conn: sa.Connection) -> None:
    Books(conn).invoice(provider_ref=None).attempt("declined").attempt("succeeded")
    assert count_violations(conn, PAID_IN_FULL_ONCE) == 0


def test_an_invoice_paid_without_an_attempt_but_with_the_providers_payment_reference_holds(
        conn: sa.Connection) -> None:
    books = Books(conn)
    books.invoice(provider_ref=books.intent).attempt("declined")
    books.provider_charge(succeeded=False).provider_charge(succeeded=True, key=f"out_of_band:{books.intent}")
    books.reconciliation_report()

    assert count_violations(conn, PAID_IN_FULL_ONCE) == 0
    assert count_violations(conn, ON_ITS_INVOICE) == 0
    assert invoices_recovered_by_reconciliation(conn) == 1


def test_an_invoice_paid_with_neither_a_succeeded_attempt_nor_a_payment_reference_is_a_violation(
        conn: sa.Connection) -> None:
    Books(conn).invoice(provider_ref=None).attempt("declined")
    assert count_violations(conn, PAID_IN_FULL_ONCE) == 1


def test_an_invoice_marked_paid_for_less_than_its_total_is_a_violation(conn: sa.Connection) -> None:
    books = Books(conn)
    books.invoice(paid_minor=1000, provider_ref=books.intent)
    assert count_violations(conn, PAID_IN_FULL_ONCE) == 1


def test_an_invoice_with_nothing_to_pay_is_paid_without_any_payment(conn: sa.Connection) -> None:
    Books(conn).invoice(total_minor=0, provider_ref=None)
    assert count_violations(conn, PAID_IN_FULL_ONCE) == 0


def test_a_payment_taken_at_the_provider_is_a_violation_until_its_invoice_is_paid_under_that_payment_intent(
        conn: sa.Connection) -> None:
    Books(conn).invoice(status="open").attempt("declined").provider_charge(succeeded=False).provider_charge(
        succeeded=True)  # paid at the provider, not (yet) here
    Books(conn).invoice(provider_ref="pi_sim_someone_else").provider_charge(succeeded=True)
    other_amount = Books(conn)
    other_amount.invoice(total_minor=3100, provider_ref=other_amount.intent).provider_charge(succeeded=True)
    Books(conn).invoice(status="open").provider_charge(succeeded=False)  # a decline asks nothing of it

    assert count_violations(conn, ON_ITS_INVOICE) == 3


def test_an_invoice_paid_by_our_own_charge_is_not_counted_as_recovered_by_reconciliation(
        conn: sa.Connection) -> None:
    ours = Books(conn)
    ours.invoice(provider_ref=ours.intent).attempt("succeeded").provider_charge(succeeded=True)
    ours.reconciliation_report()  # a late report of the same PaymentIntent: the worker ignored it
    assert invoices_recovered_by_reconciliation(conn) == 0
