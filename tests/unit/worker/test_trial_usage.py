"""A trial's usage is billed at the trial end (issue 14 defect found in the demo: it was never closed, so the
first paid close billed it in full as "Late usage" adjustments after the trial's credits had expired).

Through the real bootstrap's handlers on the fake unit of work (tests/unit/worker/test_handlers.py harness).
Plan `pro`: 9.00 a month, inference at 1 micro-USD a unit with 2.00 of included credits, storage at 0.018 per
GB-month with 1,000 included. A 14-day trial from Jan 1 ends Jan 15 (the anchor), the first paid period is
Jan 15 - Feb 15.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from services.billing_worker.bootstrap import billing_handlers, message_bus
from shared.adapters.catalog_file import load_default_catalog
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import TYPE_OF, ClosePeriod, CreateSubscription, EndTrial, Payload
from shared.domain.catalog import Catalog, PlanId, TrialEndBehaviour
from shared.domain.invoice import Invoice, InvoiceReason
from shared.domain.subscription import SubscriptionStatus
from tests.unit.worker.fakes import FakeBillingStore, FakeUnitOfWork

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_5 = datetime(2026, 1, 5, tzinfo=UTC)
JAN_10 = datetime(2026, 1, 10, tzinfo=UTC)
JAN_15 = datetime(2026, 1, 15, tzinfo=UTC)
JAN_20 = datetime(2026, 1, 20, tzinfo=UTC)
FEB_15 = datetime(2026, 2, 15, tzinfo=UTC)
_DEFAULT = load_default_catalog()
_PRO = _DEFAULT.plan("pro")
# `pro`, but cancelled when its trial ends without a payment method
CATALOG = replace(_DEFAULT, plans={**_DEFAULT.plans, PlanId("pro_cancel"): replace(
    _PRO, id=PlanId("pro_cancel"), trial_end_without_payment_method=TrialEndBehaviour.CANCEL)})


class Worker:
    def __init__(self, catalog: Catalog = CATALOG) -> None:
        self.store = FakeBillingStore()
        self.catalog = catalog
        self.bus = message_bus(billing_handlers())

    def send(self, payload: Payload, at: datetime) -> Envelope:
        envelope = new_envelope(TYPE_OF[type(payload)], payload.model_dump(mode="json"), producer="test",
                                occurred_at=at)
        self.bus.handle(FakeUnitOfWork(self.catalog, self.store), [(envelope, payload)], at)
        found = self.store.outcomes[envelope.event_id]
        assert (found["status"], found["error_code"]) == ("applied", None), found
        return envelope

    def trial(self, plan: str = "pro", payment_method: str | None = "pm_card_visa") -> str:
        self.send(CreateSubscription(subscription_id="sub_t", customer_id="cus_t", plan_id=plan, currency="USD",
                                     trial_days=14, payment_method_id=payment_method), JAN_1)
        return "sub_t"

    def end_trial(self, sub: str, at: datetime = JAN_15) -> dict[str, object]:
        envelope = self.send(EndTrial(subscription_id=sub, customer_id="cus_t", trial_end=JAN_15), at)
        return dict(self.store.outcomes[envelope.event_id]["result"])

    def invoice(self, invoice_id: object) -> Invoice:
        return self.store.invoices[str(invoice_id)][0]

    def described(self, invoice: Invoice) -> list[tuple[str, str, int]]:
        return [(line.kind.value, line.description, line.amount.amount_minor) for line in invoice.lines]


def test_trial_usage_within_its_credits_is_shown_and_covered_on_the_start_invoice() -> None:
    worker = Worker()
    sub = worker.trial()
    worker.store.record_usage(sub, "inference", 1_500_000, JAN_5)  # 1.50 of the trial's 2.00

    started = worker.invoice(worker.end_trial(sub)["invoice_id"])

    assert started.key.reason is InvoiceReason.SUBSCRIPTION_START
    assert worker.described(started) == [
        ("fee", "Pro (2026-01-15 - 2026-02-15)", 900),
        ("usage", "Trial: Inference compute: 1,500,000 micro-USD", 150),
        ("credit", "Trial credits applied to Inference compute", -150),
    ]
    assert started.total.amount_minor == 900
    trial_lines = [line for line in started.lines if line.meter_id]
    assert {(line.period.start, line.period.end) for line in trial_lines if line.period} == {(JAN_1, JAN_15)}
    # the trial window is recorded closed, with the invoice that billed it
    closed = worker.store.periods[(sub, JAN_1)]
    assert (closed["period_end"], closed["invoice_id"], closed["closed_at"]) == (JAN_15, started.id, JAN_15)


def test_trial_usage_beyond_its_credits_bills_the_overage_on_the_start_invoice() -> None:
    worker = Worker()
    sub = worker.trial()
    worker.store.record_usage(sub, "inference", 2_600_000, JAN_5)  # 2.60: 2.00 covered, 0.60 owed
    worker.store.record_usage(sub, "storage", "1200", JAN_10)  # 1,000 covered, 200 x 0.018 = 3.60

    started = worker.invoice(worker.end_trial(sub)["invoice_id"])

    assert worker.store.lines(started) == [("fee", 900), ("usage", 260), ("credit", -200), ("usage", 360)]
    assert started.total.amount_minor == 900 + 60 + 360


def test_the_first_paid_close_bills_no_late_adjustment_for_the_trial_window() -> None:
    worker = Worker()
    sub = worker.trial()
    worker.store.record_usage(sub, "inference", 1_500_000, JAN_5)
    worker.end_trial(sub)
    worker.store.record_usage(sub, "inference", 500_000, JAN_20)  # the paid period's own

    close = worker.send(ClosePeriod(subscription_id=sub, customer_id="cus_t", period_end=FEB_15), FEB_15)

    period = worker.invoice(worker.store.outcomes[close.event_id]["result"]["invoice_id"])
    assert worker.store.lines(period) == [("usage", 50), ("credit", -50), ("fee", 900)]
    assert not [line for line in period.lines if line.kind.value == "adjustment"]


def test_trial_usage_arriving_after_the_trial_end_is_a_late_adjustment_of_the_next_close() -> None:
    worker = Worker()
    sub = worker.trial()
    worker.end_trial(sub)
    worker.store.record_usage(sub, "inference", 300_000, JAN_10)  # of the trial, received after it closed

    close = worker.send(ClosePeriod(subscription_id=sub, customer_id="cus_t", period_end=FEB_15), FEB_15)

    period = worker.invoice(worker.store.outcomes[close.event_id]["result"]["invoice_id"])
    # the trial's credits expired with it: the late units are billed at the price, as any late usage
    assert worker.store.lines(period) == [("adjustment", 30), ("fee", 900)]


def test_a_trial_cancelled_at_its_end_without_a_payment_method_bills_its_overage_on_a_final_invoice() -> None:
    worker = Worker()
    sub = worker.trial(plan="pro_cancel", payment_method=None)
    worker.store.record_usage(sub, "inference", 2_600_000, JAN_5)

    result = worker.end_trial(sub)

    assert worker.store.subscriptions[sub].subscription.status is SubscriptionStatus.CANCELLED
    final = worker.invoice(result["invoice_id"])
    assert final.key.reason is InvoiceReason.PERIOD_CLOSE
    assert (final.key.period.start, final.key.period.end) == (JAN_1, JAN_15)
    assert worker.store.lines(final) == [("usage", 260), ("credit", -200)]
    assert worker.store.periods[(sub, JAN_1)]["invoice_id"] == final.id


def test_a_trial_cancelled_at_its_end_whose_usage_its_credits_covered_issues_no_invoice() -> None:
    worker = Worker()
    sub = worker.trial(plan="pro_cancel", payment_method=None)
    worker.store.record_usage(sub, "inference", 1_500_000, JAN_5)

    result = worker.end_trial(sub)

    assert result["invoice_id"] is None and worker.store.invoices_of(sub) == []
    assert worker.store.periods[(sub, JAN_1)]["closed_at"] == JAN_15


def test_a_trial_ending_past_due_without_a_payment_method_bills_its_usage_on_the_start_invoice() -> None:
    worker = Worker()
    sub = worker.trial(payment_method=None)
    worker.store.record_usage(sub, "inference", 2_600_000, JAN_5)

    started = worker.invoice(worker.end_trial(sub)["invoice_id"])

    assert worker.store.subscriptions[sub].subscription.status is SubscriptionStatus.PAST_DUE
    assert worker.store.lines(started) == [("fee", 900), ("usage", 260), ("credit", -200)]
