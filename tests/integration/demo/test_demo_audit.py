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
    credit_notes,
    customer_balance_entries,
    customer_balances,
    invoices,
    payment_attempts,
    simulated_gateway_charges,
)
from shared.adapters.postgres.schema.core import outbox
from shared.contracts import topics

pytestmark = pytest.mark.integration

PAID_IN_FULL_ONCE = "every_paid_invoice_is_paid_in_full_once"
ON_ITS_INVOICE = "every_payment_taken_at_the_provider_is_on_its_invoice"
SETTLES = "every_invoice_settles_total_less_credit_notes"
BALANCE = "customer_balance_equals_sum_of_entries_never_negative"
NOTE_NUMBERS = "credit_note_numbers_are_gapless_per_issuer"
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
                provider_ref: str | None = None, balance_applied_minor: int = 0) -> Books:
        paid = status == "paid"
        due = max(total_minor, 0) - balance_applied_minor
        self.conn.execute(invoices.insert().values(
            invoice_id=self.invoice_id, subscription_id=self.subscription_id, customer_id=self.customer_id,
            kind="subscription_start", period_start=JAN_6 - timedelta(days=6), period_end=JAN_6 + timedelta(days=25),
            status=status, number=f"INV-{self.invoice_id}", currency="USD", total_minor=total_minor,
            balance_applied_minor=balance_applied_minor, amount_due_minor=due,
            amount_paid_minor=(due if paid_minor is None else paid_minor) if paid else 0,
            provider_ref=provider_ref, paid_at=JAN_6 if paid else None))
        return self

    def balance_entry(self, kind: str, amount_minor: int, *, invoice: bool = True) -> Books:
        """An entry of the customer's balance (and the balance row moved by it, as the one writer does)."""
        self.conn.execute(customer_balance_entries.insert().values(
            entry_id=f"{kind}:{uuid.uuid4().hex[:8]}", customer_id=self.customer_id, currency="USD",
            amount_minor=amount_minor, kind=kind, invoice_id=self.invoice_id if invoice else None,
            occurred_at=JAN_6))
        return self

    def balance(self, balance_minor: int) -> Books:
        self.conn.execute(customer_balances.insert().values(customer_id=self.customer_id, currency="USD",
                                                            balance_minor=balance_minor))
        return self

    def credit_note(self, *, seq: int, reduced: int = 0, refunded: int = 0, credited: int = 0) -> Books:
        total = reduced + refunded + credited
        self.conn.execute(credit_notes.insert().values(
            credit_note_id=f"cn_{self.invoice_id}_{seq}", invoice_id=self.invoice_id,
            subscription_id=self.subscription_id, customer_id=self.customer_id, issuer=f"audit-{self.invoice_id}",
            number=f"CN-{seq:06d}", number_seq=seq, currency="USD", reason="product_unsatisfactory",
            subtotal_minor=total, tax_minor=0, total_minor=total, reduced_minor=reduced, refunded_minor=refunded,
            credited_minor=credited, issued_at=JAN_6))
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


# --- issue 14: the customer balance and credit notes ---------------------------------------------------------


def test_an_invoice_partly_paid_by_the_balance_and_partly_in_cash_settles(conn: sa.Connection) -> None:
    books = Books(conn)
    books.invoice(balance_applied_minor=900).attempt("succeeded")  # 29.00: 9.00 from the balance, 20.00 charged
    books.balance_entry("adjustment", 1500, invoice=False).balance_entry("invoice_draw", -900).balance(600)

    assert [count_violations(conn, name) for name in (PAID_IN_FULL_ONCE, SETTLES, BALANCE)] == [0, 0, 0]


def test_a_balance_draw_missing_from_the_entries_is_a_violation(conn: sa.Connection) -> None:
    # The invoice says 9.00 came from the balance, the balance's own entries say nothing was drawn.
    Books(conn).invoice(balance_applied_minor=900).attempt("succeeded")
    assert count_violations(conn, SETTLES) == 1


def test_a_credit_note_refunded_and_one_credited_to_the_balance_settle_a_paid_invoice(conn: sa.Connection) -> None:
    books = Books(conn)
    books.invoice().attempt("succeeded")  # 29.00 paid in cash
    books.credit_note(seq=1, refunded=500).credit_note(seq=2, credited=400)
    books.balance_entry("credit_note", 400).balance(400)

    assert [count_violations(conn, name) for name in (SETTLES, BALANCE, NOTE_NUMBERS)] == [0, 0, 0]


def test_a_credit_note_credited_without_its_balance_entry_or_refunding_more_than_was_paid_is_a_violation(
        conn: sa.Connection) -> None:
    Books(conn).invoice().attempt("succeeded").credit_note(seq=1, credited=400)  # no entry for the 4.00
    Books(conn).invoice(status="open").credit_note(seq=1, refunded=500)  # refunds cash never paid
    assert count_violations(conn, SETTLES) == 2


def test_a_credit_note_reducing_an_open_invoice_leaves_the_rest_owed_and_then_paid(conn: sa.Connection) -> None:
    books = Books(conn)
    books.invoice(paid_minor=2400, provider_ref=books.intent).credit_note(seq=1, reduced=500)
    assert [count_violations(conn, name) for name in (PAID_IN_FULL_ONCE, SETTLES)] == [0, 0]


def test_a_negative_invoice_must_be_credited_to_the_balance_in_full(conn: sa.Connection) -> None:
    credited = Books(conn)
    credited.invoice(total_minor=-500, provider_ref=None).balance_entry("invoice_credit", 500).balance(500)
    Books(conn).invoice(total_minor=-500, provider_ref=None)  # its credit went nowhere

    assert count_violations(conn, SETTLES) == 1


def test_a_balance_that_is_not_the_sum_of_its_entries_or_went_below_zero_is_a_violation(
        conn: sa.Connection) -> None:
    Books(conn).balance_entry("adjustment", 1000, invoice=False).balance(900)
    Books(conn).balance_entry("adjustment", -300, invoice=False).balance_entry("adjustment", 300, invoice=False)

    assert count_violations(conn, BALANCE) == 2


def test_a_gap_in_credit_note_numbers_is_a_violation(conn: sa.Connection) -> None:
    Books(conn).invoice().attempt("succeeded").credit_note(seq=1, refunded=100).credit_note(seq=3, refunded=100)
    assert count_violations(conn, NOTE_NUMBERS) == 1


def test_the_summary_counts_the_corrections_from_the_tables(demo_engine: sa.Engine) -> None:
    from services.demo.audit import summarise

    # Committed (the summary reads through the engine) and left in place: the ledgers are append-only, and these
    # books break no invariant, so the other tests' counts are unchanged.
    with demo_engine.begin() as conn:
        books = Books(conn)
        books.invoice().attempt("succeeded").credit_note(seq=1, refunded=500).credit_note(seq=2, credited=400)
        books.balance_entry("credit_note", 400).balance(400)

    corrections = summarise(demo_engine)["corrections_stored"]

    assert (corrections["credit_notes"], corrections["refunded_minor"], corrections["credited_to_balance_minor"],
            corrections["balances_held_minor"]) == (2, 500, 400, 400)
