"""Issue 15, item 3 (prepaid credit purchases) on the fake unit of work: hand-computed figures.

A purchase of USD 50.00 of `inference` credit for USD 45.00 is a MANUAL invoice of 45.00 ("Prepaid credits");
the 50.00 are granted (top_up, priority 50, a year from payment) when that invoice is paid, once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts.messages import PaymentSucceeded, PurchaseCredits, VoidInvoice
from shared.domain.credit_purchase import PurchaseStatus
from shared.domain.ids import attempt_id_for
from shared.domain.invoice import Invoice, InvoiceReason, InvoiceStatus
from shared.domain.money import Money
from tests.unit.worker.test_handlers import JAN_1, JAN_16, Worker

JAN_3 = datetime(2026, 1, 3, tzinfo=UTC)


@pytest.fixture
def worker() -> Worker:
    return Worker()


def purchase(worker: Worker, sub: str, purchase_id: str = "cp_1", at: datetime = JAN_1, **extra: int) -> Invoice:
    fields = {"amount_minor": 5000, "price_minor": 4500, **extra}
    envelope = worker.send(PurchaseCredits(subscription_id=sub, customer_id=f"cus_{sub}", purchase_id=purchase_id,
                                           meter_id="inference", **fields), at)
    assert worker.outcome(envelope) == ("applied", None), worker.store.outcomes[envelope.event_id]
    [invoice] = [i for i in worker.invoices(sub) if i.id == worker.result(envelope)["invoice_id"]]
    return invoice


def pay(worker: Worker, sub: str, invoice: Invoice, ref: str = "pi_1") -> None:
    worker.send(PaymentSucceeded(subscription_id=sub, invoice_id=invoice.id, attempt_id=attempt_id_for(invoice.id, 1),
                                 provider_ref=ref, amount_minor=invoice.amount_due.amount_minor, currency="USD",
                                 paid_at=JAN_3), JAN_3)


def top_ups(worker: Worker, sub: str) -> list[tuple[str, int, int, datetime | None]]:
    ledger = worker.store.ledgers[sub].ledger
    return [(g.grant_id, g.amount.amount_minor, g.priority, g.expires_at)  # type: ignore[union-attr]
            for g in ledger.grants("inference") if g.source.value == "top_up"]


def test_a_purchase_is_a_manual_invoice_and_its_credit_is_granted_once_when_paid(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = purchase(worker, sub)

    assert (invoice.key.reason, invoice.status, invoice.total.amount_minor) == (
        InvoiceReason.MANUAL, InvoiceStatus.OPEN, 4500)
    assert [line.description for line in invoice.lines] == ["Prepaid credits (inference)"]
    pending = worker.store.credit_purchases["cp_1"].status
    assert pending is PurchaseStatus.PENDING and top_ups(worker, sub) == []  # nothing before the money

    pay(worker, sub, invoice)
    pay(worker, sub, invoice, ref="pi_2")  # a second report of a payment grants nothing more

    assert top_ups(worker, sub) == [(f"{sub}|cp_1", 5000, 50, JAN_3 + timedelta(days=365))]
    assert worker.store.credit_purchases["cp_1"].status is PurchaseStatus.GRANTED
    assert worker.store.ledgers[sub].ledger.balance("inference", JAN_16) == Money(200 + 5000, "USD")
    granted = [e for e in worker.store.events("credits.granted") if e.payload["source"] == "top_up"]
    assert [e.payload["amount_minor"] for e in granted] == [5000]


def test_a_purchase_replayed_issues_one_invoice(worker: Worker) -> None:
    sub = worker.subscribe()
    purchase(worker, sub)
    envelope = worker.send(PurchaseCredits(subscription_id=sub, customer_id=f"cus_{sub}", purchase_id="cp_1",
                                           meter_id="inference", amount_minor=5000, price_minor=4500), JAN_16)
    assert worker.result(envelope)["replayed"] is True
    assert len([i for i in worker.invoices(sub) if i.key.reason is InvoiceReason.MANUAL]) == 1


def test_a_voided_purchase_invoice_grants_nothing(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = purchase(worker, sub)
    worker.send(VoidInvoice(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice.id), JAN_3)
    pay(worker, sub, invoice)  # a charge in flight that succeeds afterwards is audited, not granted

    assert worker.store.credit_purchases["cp_1"].status is PurchaseStatus.CANCELLED
    assert top_ups(worker, sub) == []


def test_a_purchase_the_customer_balance_pays_is_granted_at_finalisation(worker: Worker) -> None:
    sub = worker.subscribe()
    worker.store.balances[("cus_sub_1", "USD")] = 10_000
    invoice = purchase(worker, sub, price_minor=3000, amount_minor=3000)

    assert (invoice.status, invoice.balance_applied_minor) == (InvoiceStatus.PAID, 3000)
    assert top_ups(worker, sub) == [(f"{sub}|cp_1", 3000, 50, JAN_1 + timedelta(days=365))]


def test_credit_of_a_unit_meter_cannot_be_bought(worker: Worker) -> None:
    sub = worker.subscribe()
    envelope = worker.send(PurchaseCredits(subscription_id=sub, customer_id=f"cus_{sub}", purchase_id="cp_s",
                                           meter_id="storage", amount_minor=100, price_minor=100), JAN_1)
    assert worker.outcome(envelope) == ("rejected", "invalid_credit_grant")
