"""Issue 14, item 3 (credit notes) on the fake unit of work: hand-computed figures.

Pro: USD 9.00 a month in advance; the subscription's first invoice (line 1: the fee) is USD 9.00.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.contracts.messages import ClosePeriod, CreditNoteLineRequest, IssueCreditNote, PaymentSucceeded
from shared.domain.ids import attempt_id_for
from shared.domain.invoice import Invoice, InvoiceStatus
from tests.unit.worker.test_handlers import FEB_1, JAN_16, Worker

JAN_3 = datetime(2026, 1, 3, tzinfo=UTC)


@pytest.fixture
def worker() -> Worker:
    return Worker()


def first_invoice(worker: Worker, sub: str) -> Invoice:
    return worker.invoices(sub)[0]


def pay(worker: Worker, sub: str, invoice: Invoice) -> None:
    worker.send(PaymentSucceeded(subscription_id=sub, invoice_id=invoice.id, attempt_id=attempt_id_for(invoice.id, 1),
                                 provider_ref="pi_1", amount_minor=invoice.amount_due.amount_minor, currency="USD",
                                 paid_at=JAN_3), JAN_3)


def credit(sub: str, invoice_id: str, **fields: object) -> IssueCreditNote:
    return IssueCreditNote(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice_id,
                           reason=fields.pop("reason", "product_unsatisfactory"), **fields)  # type: ignore[arg-type]


def test_a_paid_invoice_is_credited_to_the_customer_balance_by_default(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    pay(worker, sub, invoice)

    note = worker.send(credit(sub, invoice.id, lines=[CreditNoteLineRequest(line_no=1, amount_minor=300)]), JAN_16)

    assert worker.outcome(note) == ("applied", None)
    result = worker.result(note)
    assert (result["number"], result["total_minor"], result["credited_minor"], result["refunded_minor"],
            result["reduced_minor"]) == ("CN-000001", 300, 300, 0, 0)
    assert worker.store.balances[(f"cus_{sub}", "USD")] == 300
    [entry] = worker.store.balance_entries.values()
    assert (entry.kind.value, entry.amount_minor, entry.credit_note_id) == (
        "credit_note", 300, result["credit_note_id"])
    assert worker.store.refunds == {}
    [event] = worker.store.events("credit_note.created")  # for outgoing webhooks and any other consumer
    assert (event.payload["number"], event.payload["invoice_id"], event.payload["credited_minor"]) == (
        "CN-000001", invoice.id, 300)


def test_a_refund_is_a_pending_refund_row_on_the_invoices_payment_and_numbers_follow_each_other(
        worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    pay(worker, sub, invoice)

    first = worker.send(credit(sub, invoice.id, amount_minor=400, refund_minor=400), JAN_16)
    second = worker.send(credit(sub, invoice.id, amount_minor=500, refund_minor=501), JAN_16)
    third = worker.send(credit(sub, invoice.id, amount_minor=500, refund_minor=500), JAN_16)
    fourth = worker.send(credit(sub, invoice.id, amount_minor=1), JAN_16)

    assert worker.outcome(first) == ("applied", None)
    assert worker.store.refunds[worker.result(first)["credit_note_id"]] == {
        "amount_minor": 400, "payment_ref": "pi_1", "status": "pending"}
    assert worker.outcome(second) == ("rejected", "refund_exceeds_paid")  # 9.00 paid: 4.00 + 5.01 > 9.00
    assert (worker.outcome(third), worker.result(third)["number"]) == (("applied", None), "CN-000002")
    assert worker.outcome(fourth) == ("rejected", "credit_exceeds_invoice")  # 9.00 of 9.00 credited


def test_an_open_invoice_is_reduced_and_settled_when_nothing_is_left(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)

    partial = worker.send(credit(sub, invoice.id, amount_minor=400), JAN_3)

    # 9.00 owed, 4.00 taken off: the pending attempt for 9.00 is withdrawn and one for 5.00 requested
    assert worker.result(partial)["reduced_minor"] == 400
    reduced = first_invoice(worker, sub)
    assert (reduced.status, reduced.amount_remaining.amount_minor) == (InvoiceStatus.OPEN, 500)
    assert [(a["attempt_no"], a["status"], a["amount_minor"]) for a in worker.attempts(invoice.id)] == [
        (1, "cancelled", 900), (1000, "pending", 500)]

    rest = worker.send(credit(sub, invoice.id, amount_minor=500, reason="order_change"), JAN_3)

    settled = first_invoice(worker, sub)
    assert (worker.result(rest)["invoice_status"], settled.status, settled.amount_paid_minor) == (
        "paid", InvoiceStatus.PAID, 0)
    assert [a["status"] for a in worker.attempts(invoice.id)] == ["cancelled", "cancelled"]
    assert worker.store.balances.get((f"cus_{sub}", "USD"), 0) == 0


def test_lines_and_refusals_carry_their_codes(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    pay(worker, sub, invoice)

    too_much = worker.send(credit(sub, invoice.id, lines=[CreditNoteLineRequest(line_no=1, amount_minor=901)]),
                           JAN_16)
    no_line = worker.send(credit(sub, invoice.id, lines=[CreditNoteLineRequest(line_no=7, amount_minor=1)]), JAN_16)
    unknown = worker.send(credit(sub, "in_nope", amount_minor=1), JAN_16)

    assert worker.outcome(too_much) == ("rejected", "credit_exceeds_line")
    assert worker.outcome(no_line) == ("rejected", "unknown_line")
    assert worker.outcome(unknown) == ("rejected", "not_found")
    assert worker.store.credit_notes == {} and worker.store.next_credit_note_number == 1


def test_a_whole_invoice_note_gives_a_once_coupon_back_so_the_next_invoice_is_discounted_again(
        worker: Worker) -> None:
    # NOTE: the rule: a credit note restores consumption only where it undoes an invoice in full (like a void).
    # WELCOME20 (20 % once) discounted the first invoice of basic_monthly: 10.00 - 2.00 = 8.00. Credited in full,
    # that invoice no longer counts, so February's fee (on the close of January) is discounted: 8.00 again.
    sub = worker.subscribe(plan="basic_monthly", coupon_id="WELCOME20", trial_days=0)
    invoice = first_invoice(worker, sub)
    assert invoice.total.amount_minor == 800
    pay(worker, sub, invoice)

    note = worker.send(credit(sub, invoice.id, amount_minor=800, reason="duplicate"), JAN_16)
    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)

    assert worker.result(note)["coupon_redemption_given_back"] is True
    assert worker.invoices(sub)[-1].total.amount_minor == 800


def test_without_the_credit_note_the_once_coupon_is_not_applied_again(worker: Worker) -> None:
    sub = worker.subscribe(plan="basic_monthly", coupon_id="WELCOME20", trial_days=0)
    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)
    assert worker.invoices(sub)[-1].total.amount_minor == 1000
