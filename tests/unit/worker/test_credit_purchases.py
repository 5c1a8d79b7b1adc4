"""Issue 15, item 3 (prepaid credit purchases) on the fake unit of work: hand-computed figures.

A purchase of USD 50.00 of `inference` credit for USD 45.00 is a MANUAL invoice of 45.00 ("Prepaid credits");
the 50.00 are granted (top_up, priority 50, a year from payment) when that invoice is paid, once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.contracts.messages import CheckAutoRecharge, PaymentSucceeded, PurchaseCredits, VoidInvoice
from shared.domain.credit_purchase import AutoRecharge, PurchaseOrigin, PurchaseStatus, remaining_in_period
from shared.domain.ids import attempt_id_for
from shared.domain.invoice import Invoice, InvoiceReason, InvoiceStatus
from shared.domain.money import Money, UnitPrice
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


# --- auto-recharge: threshold 1.00, target 5.00 on inference (Pro includes 2.00; 0.000001 a micro-USD) -------


def recharge_setting(worker: Worker, sub: str) -> None:
    worker.store.auto_recharges[sub] = [AutoRecharge("inference", Money(100, "USD"), Money(500, "USD"))]


def check(sub: str) -> CheckAutoRecharge:
    return CheckAutoRecharge(subscription_id=sub, customer_id=f"cus_{sub}", meter_id="inference")


def recharges(worker: Worker) -> list[tuple[int, PurchaseStatus]]:
    return [(p.amount.amount_minor, p.status) for p in worker.store.credit_purchases.values()
            if p.origin is PurchaseOrigin.AUTO_RECHARGE]


def test_a_crossing_seen_by_concurrent_batches_buys_once_up_to_the_target(worker: Worker) -> None:
    sub = worker.subscribe()
    recharge_setting(worker, sub)
    worker.store.unbilled[(sub, "inference")] = Decimal(1_500_000)  # 1.50 of usage: 2.00 - 1.50 = 0.50 left

    worker.send_batch([check(sub), check(sub)], JAN_16)  # two hints of one crossing, in one batch
    worker.send(check(sub), JAN_16)  # and a third, later

    assert recharges(worker) == [(450, PurchaseStatus.PENDING)]  # 5.00 - 0.50, once
    [bought] = [p for p in worker.store.credit_purchases.values()]
    [sold] = [i for i in worker.invoices(sub) if i.id == bought.invoice_id]
    assert (sold.total.amount_minor, sold.key.reason) == (450, InvoiceReason.MANUAL)

    pay(worker, sub, sold)
    worker.send(check(sub), JAN_16)  # 2.00 + 4.50 - 1.50 = 5.00 left: above the threshold, nothing to buy
    assert recharges(worker) == [(450, PurchaseStatus.GRANTED)]

    worker.store.unbilled[(sub, "inference")] = Decimal(6_000_000)  # 6.50 - 6.00 = 0.50: the next crossing
    worker.send(check(sub), JAN_16)
    assert recharges(worker) == [(450, PurchaseStatus.GRANTED), (450, PurchaseStatus.PENDING)]


def test_no_recharge_above_the_threshold_or_when_disabled(worker: Worker) -> None:
    sub = worker.subscribe()
    recharge_setting(worker, sub)
    worker.store.unbilled[(sub, "inference")] = Decimal(1_000_000)  # 2.00 - 1.00 = 1.00: not below 1.00
    worker.send(check(sub), JAN_16)
    worker.store.auto_recharges.clear()  # disabled: the worker loads enabled settings only
    worker.store.unbilled[(sub, "inference")] = Decimal(1_900_000)
    worker.send(check(sub), JAN_16)
    assert recharges(worker) == []


def test_the_rule_spends_ahead_only_for_a_unit_price() -> None:
    usd = Money(200, "USD")
    assert remaining_in_period(usd, Decimal(1_500_000), UnitPrice.of("0.000001", "USD")) == Money(50, "USD")
    assert remaining_in_period(usd, Decimal(1_500_000), None) == usd  # a tiered meter: detected at the close
    assert AutoRecharge("inference", Money(100, "USD"), Money(500, "USD")).due(Money(-300, "USD")) == Money(
        800, "USD")
