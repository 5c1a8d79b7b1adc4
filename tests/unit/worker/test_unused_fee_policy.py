"""Issue 14, item 1 (second half): the unused part of the fee paid in advance on a cancel-now or a dunning
give-up, by the plan's `unused_fee_policy`, on the fake unit of work (hand-computed).

Test plans: Pro's meters at a fee of USD 30.00 a month. Subscribed on 1 April (a 30-day period), cancelled on
11 April: 10 days used, 20 unused, so 30.00 x 20/30 = 20.00 is the unused fee.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from services.billing_worker.bootstrap import billing_handlers, message_bus
from shared.contracts.envelope import Envelope
from shared.contracts.messages import (
    CancelSubscription,
    CreateSubscription,
    GiveUpDunning,
    Payload,
    PaymentSucceeded,
)
from shared.domain.catalog import PlanId, UnusedFeePolicy
from shared.domain.ids import attempt_id_for
from shared.domain.invoice import Invoice, InvoiceStatus
from shared.domain.money import Money
from tests.unit.worker.fakes import FakeBillingStore, FakeUnitOfWork
from tests.unit.worker.test_handlers import CATALOG, Worker

APR_1 = datetime(2026, 4, 1, tzinfo=UTC)
APR_3 = datetime(2026, 4, 3, tzinfo=UTC)
APR_11 = datetime(2026, 4, 11, tzinfo=UTC)
PRO = CATALOG.plan("pro")
POLICY_CATALOG = dataclasses.replace(CATALOG, plans=MappingProxyType({
    **CATALOG.plans,
    **{PlanId(f"pro30_{p.value}"): dataclasses.replace(PRO, id=PlanId(f"pro30_{p.value}"), price=Money(3000, "USD"),
                                                       unused_fee_policy=p) for p in UnusedFeePolicy}}))


class PolicyWorker(Worker):
    def __init__(self) -> None:
        self.store = FakeBillingStore()
        self.bus = message_bus(billing_handlers())

    def replay(self, envelopes: Sequence[Envelope], payloads: Sequence[Payload], at: datetime) -> None:
        self.bus.handle(FakeUnitOfWork(POLICY_CATALOG, self.store), list(zip(envelopes, payloads, strict=True)), at)


@pytest.fixture
def worker() -> PolicyWorker:
    return PolicyWorker()


def start(worker: PolicyWorker, policy: str, *, paid: bool, tax_rate_bps: int = 0) -> tuple[str, Invoice]:
    sub = f"sub_{policy}"
    created = worker.send(CreateSubscription(subscription_id=sub, customer_id=f"cus_{sub}", plan_id=f"pro30_{policy}",
                                             currency="USD", payment_method_id="pm_card_visa",
                                             tax_rate_bps=tax_rate_bps), APR_1)
    assert worker.outcome(created) == ("applied", None)
    [invoice] = worker.invoices(sub)
    if paid:
        worker.send(PaymentSucceeded(subscription_id=sub, invoice_id=invoice.id,
                                     attempt_id=attempt_id_for(invoice.id, 1), provider_ref="pi_fee",
                                     amount_minor=invoice.amount_due.amount_minor, currency="USD", paid_at=APR_3),
                    APR_3)
    return sub, invoice


def cancel_now(worker: PolicyWorker, sub: str) -> Envelope:
    cancel = worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), APR_11)
    assert worker.outcome(cancel) == ("applied", None)
    return cancel


def notes(worker: PolicyWorker) -> list[tuple[str, int, int, int, int, str]]:
    return [(n.invoice_id, n.total.amount_minor, n.reduced.amount_minor, n.refunded.amount_minor,
             n.credited.amount_minor, number) for n, number in worker.store.credit_notes.values()]


def test_policy_credit_puts_the_unused_20_of_a_paid_30_fee_on_the_customer_balance(worker: PolicyWorker) -> None:
    sub, fee_invoice = start(worker, "credit", paid=True)
    cancel_now(worker, sub)
    assert notes(worker) == [(fee_invoice.id, 2000, 0, 0, 2000, "CN-000001")]
    assert worker.store.balances[(f"cus_{sub}", "USD")] == 2000
    [(note, _)] = worker.store.credit_notes.values()
    assert (note.reason.value, note.lines[0].line_no) == ("order_change", 1)


def test_policy_refund_refunds_the_unused_20_plus_its_tax_on_the_fee_payment(worker: PolicyWorker) -> None:
    sub, fee_invoice = start(worker, "refund", paid=True, tax_rate_bps=1000)  # 30.00 + 3.00 tax = 33.00 paid
    cancel_now(worker, sub)
    assert notes(worker) == [(fee_invoice.id, 2200, 0, 2200, 0, "CN-000001")]  # 20.00 + 2.00 of the tax
    [refund] = worker.store.refunds.values()
    assert refund == {"amount_minor": 2200, "payment_ref": "pi_fee", "status": "pending"}
    assert worker.store.balances.get((f"cus_{sub}", "USD"), 0) == 0


def test_policy_none_keeps_todays_behaviour_nothing_back(worker: PolicyWorker) -> None:
    sub, _ = start(worker, "none", paid=True)
    cancel_now(worker, sub)
    assert worker.store.credit_notes == {} and worker.store.refunds == {}


def test_an_unpaid_fee_invoice_is_reduced_instead_and_its_pending_charge_asks_for_the_used_10_only(
        worker: PolicyWorker) -> None:
    sub, fee_invoice = start(worker, "credit", paid=False)
    cancel_now(worker, sub)
    assert notes(worker) == [(fee_invoice.id, 2000, 2000, 0, 0, "CN-000001")]
    invoice = worker.store.invoices[fee_invoice.id][0]
    assert (invoice.status, invoice.amount_remaining.amount_minor) == (InvoiceStatus.OPEN, 1000)
    assert [(a["attempt_no"], a["status"], a["amount_minor"]) for a in worker.attempts(fee_invoice.id)] == [
        (1, "cancelled", 3000), (1000, "pending", 1000)]


def test_a_give_up_with_the_refund_policy_reduces_the_uncollectible_fee_invoice_since_nothing_was_paid(
        worker: PolicyWorker) -> None:
    sub, fee_invoice = start(worker, "refund", paid=False)
    give_up = worker.send(GiveUpDunning(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=fee_invoice.id),
                          APR_11)
    assert worker.outcome(give_up) == ("applied", None)
    assert notes(worker) == [(fee_invoice.id, 2000, 2000, 0, 0, "CN-000001")]  # nothing refunded: nothing paid
    invoice = worker.store.invoices[fee_invoice.id][0]
    assert (invoice.status, invoice.amount_remaining.amount_minor) == (InvoiceStatus.UNCOLLECTIBLE, 1000)
    assert worker.store.refunds == {}


def test_the_catalog_file_names_the_policy_per_plan_and_defaults_to_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from shared.adapters.catalog_file import CATALOG_DIR, load_catalog_file
    from shared.domain.errors import CatalogError

    document = yaml.safe_load((CATALOG_DIR / "classic_plans.yaml").read_text())
    document["plans"][0]["unused_fee_policy"] = "credit"
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    loaded = load_catalog_file(path)
    assert loaded.plan("basic_monthly").unused_fee_policy is UnusedFeePolicy.CREDIT
    assert loaded.plan("premium_monthly").unused_fee_policy is UnusedFeePolicy.NONE
    document["plans"][0]["unused_fee_policy"] = "refund_twice"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(CatalogError, match="unused_fee_policy"):
        load_catalog_file(path)
