"""Issue 14, item 3 (void, mark uncollectible, one-off charges) on the fake unit of work, hand-computed.

basic_monthly: USD 10.00 a month in advance (trial_days=0 here).
"""

from __future__ import annotations

from datetime import timedelta

from shared.contracts.messages import (
    CancelSubscription,
    ClosePeriod,
    CreateOneOffInvoice,
    FinalizeInvoice,
    MarkInvoiceUncollectible,
    OneOffLineRequest,
    PaymentSucceeded,
    VoidInvoice,
)
from shared.domain.invoice import InvoiceReason, InvoiceStatus
from tests.unit.worker.test_handlers import FEB_1, JAN_1, JAN_16, Worker


def one_off(sub: str, *lines: OneOffLineRequest, tax_rate_bps: int | None = None) -> CreateOneOffInvoice:
    return CreateOneOffInvoice(subscription_id=sub, customer_id=f"cus_{sub}", lines=list(lines),
                               tax_rate_bps=tax_rate_bps)


def test_voiding_an_open_invoice_cancels_its_pending_attempt_gives_back_its_balance_draw_and_keeps_its_number(
) -> None:
    worker = Worker()
    worker.store.balances[("cus_sub_1", "USD")] = 300
    sub = worker.subscribe(plan="basic_monthly", trial_days=0)
    [first] = worker.invoices(sub)
    # 10.00 fee: 3.00 drawn from the balance, 7.00 to charge
    assert (first.balance_applied_minor, first.amount_due.amount_minor) == (300, 700)

    void = worker.send(VoidInvoice(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=first.id,
                                   reason="billed by mistake"), JAN_16)

    assert worker.outcome(void) == ("applied", None)
    assert worker.result(void)["balance_restored_minor"] == 300
    voided = worker.store.invoices[first.id][0]
    assert (voided.status, voided.number) == (InvoiceStatus.VOID, first.number)
    assert [(a["attempt_no"], a["status"]) for a in worker.attempts(first.id)] == [(1, "cancelled")]
    assert worker.store.balances[("cus_sub_1", "USD")] == 300
    assert [(e.kind.value, e.amount_minor) for e in worker.store.balance_entries.values()] == [
        ("invoice_draw", -300), ("void_restore", 300)]
    assert [e.payload["invoice_id"] for e in worker.store.events("invoice.voided")] == [first.id]
    # the next invoice takes the next number: the void one keeps its own
    charge = worker.send(one_off(sub, OneOffLineRequest(description="Setup", amount_minor=1_000)), JAN_16)
    nxt = worker.store.invoices[worker.result(charge)["invoice_id"]][0]
    assert (first.number, nxt.number) == ("FAKE-000001", "FAKE-000002")

    again = worker.send(VoidInvoice(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=first.id), JAN_16)
    assert worker.outcome(again) == ("rejected", "invoice_not_voidable")


def test_a_charge_that_succeeds_after_its_invoice_was_voided_is_audited_for_a_refund_not_accepted() -> None:
    worker = Worker()
    sub = worker.subscribe(plan="basic_monthly", trial_days=0)
    [first] = worker.invoices(sub)
    worker.send(VoidInvoice(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=first.id), JAN_16)

    worker.send(PaymentSucceeded(subscription_id=sub, invoice_id=first.id,
                                 amount_minor=1_000, currency="USD", provider_ref="pi_late", paid_at=JAN_16), JAN_16)

    assert worker.store.invoices[first.id][0].status is InvoiceStatus.VOID
    assert [(a["action"], a["entity_id"], a["detail"]["provider_ref"]) for a in worker.store.audit
            if a["action"].startswith("payment.")] == [("payment.on_void", first.id, "pi_late")]


def test_marking_an_open_invoice_uncollectible_cancels_its_pending_attempt_and_announces_it() -> None:
    worker = Worker()
    sub = worker.subscribe(plan="basic_monthly", trial_days=0)
    [first] = worker.invoices(sub)

    mark = worker.send(MarkInvoiceUncollectible(subscription_id=sub, customer_id=f"cus_{sub}",
                                                invoice_id=first.id), JAN_16)

    assert worker.outcome(mark) == ("applied", None)
    assert worker.store.invoices[first.id][0].status is InvoiceStatus.UNCOLLECTIBLE
    assert [a["status"] for a in worker.attempts(first.id)] == ["cancelled"]
    assert [e.payload["invoice_id"] for e in worker.store.events("invoice.uncollectible")] == [first.id]
    again = worker.send(MarkInvoiceUncollectible(subscription_id=sub, customer_id=f"cus_{sub}",
                                                 invoice_id=first.id), JAN_16)
    assert worker.outcome(again) == ("rejected", "invoice_not_open")
    unknown = worker.send(MarkInvoiceUncollectible(subscription_id=sub, customer_id=f"cus_{sub}",
                                                   invoice_id="in_nope"), JAN_16)
    assert worker.outcome(unknown) == ("rejected", "unknown_invoice")


def test_a_one_off_charge_is_a_manual_invoice_drawn_from_the_balance_then_charged_for_the_rest() -> None:
    worker = Worker()
    sub = worker.subscribe(plan="basic_monthly", trial_days=0, tax_rate_bps=1000)
    worker.store.balances[("cus_sub_1", "USD")] = 1_000

    first, second = worker.send_batch([
        one_off(sub, OneOffLineRequest(description="Onboarding", amount_minor=0, quantity=2, unit_amount_minor=1_500),
                OneOffLineRequest(description="Data import", amount_minor=500)),
        one_off(sub, OneOffLineRequest(description="Extra seat setup", amount_minor=200), tax_rate_bps=0),
    ], JAN_16)

    invoice = worker.store.invoices[worker.result(first)["invoice_id"]][0]
    # 2 x 15.00 + 5.00 = 35.00, tax 10% = 3.50: 38.50; the balance's 10.00 drawn, 28.50 charged
    assert worker.store.lines(invoice) == [("adjustment", 3_000), ("adjustment", 500), ("tax", 350)]
    assert (invoice.key.reason, invoice.total.amount_minor, invoice.balance_applied_minor) == (
        InvoiceReason.MANUAL, 3_850, 1_000)
    assert [(a["attempt_no"], a["amount_minor"]) for a in worker.attempts(invoice.id)] == [(1, 2_850)]
    # a second one-off at the same billing instant is its own invoice (its id from its command)
    other = worker.store.invoices[worker.result(second)["invoice_id"]][0]
    assert other.id != invoice.id and (other.total.amount_minor, other.number) == (200, "FAKE-000003")
    assert [(a["amount_minor"]) for a in worker.attempts(other.id)] == [200]


def test_a_one_off_charge_is_refused_on_a_cancelled_subscription_and_when_it_charges_nothing() -> None:
    worker = Worker()
    sub = worker.subscribe(plan="basic_monthly", trial_days=0)
    nothing = worker.send(one_off(sub, OneOffLineRequest(description="Goodwill", amount_minor=-500),
                                  OneOffLineRequest(description="Fee", amount_minor=500)), JAN_1)
    worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), JAN_16)

    cancelled = worker.send(one_off(sub, OneOffLineRequest(description="Late fee", amount_minor=500)), FEB_1)

    assert worker.outcome(nothing) == ("rejected", "invalid_charge")
    assert worker.outcome(cancelled) == ("rejected", "subscription_cancelled")
    assert [i.key.reason for i in worker.invoices(sub)] == [InvoiceReason.SUBSCRIPTION_START]


def test_a_draft_voided_during_its_grace_is_never_numbered_nor_finalised_later() -> None:
    worker = Worker()
    sub = worker.subscribe(plan="basic_monthly", trial_days=0)
    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1,
                            finalize_after_seconds=86_400), FEB_1)
    [draft] = [i for i in worker.invoices(sub) if i.status is InvoiceStatus.DRAFT]
    assert draft.number is None

    void = worker.send(VoidInvoice(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=draft.id), FEB_1)
    finalize = worker.send(FinalizeInvoice(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=draft.id),
                           FEB_1 + timedelta(days=1))

    assert worker.outcome(void) == ("applied", None)
    voided = worker.store.invoices[draft.id][0]
    assert (voided.status, voided.number, worker.attempts(draft.id)) == (InvoiceStatus.VOID, None, [])
    assert worker.outcome(finalize)[0] in ("ignored", "rejected")
    assert worker.store.invoices[draft.id][0].status is InvoiceStatus.VOID
