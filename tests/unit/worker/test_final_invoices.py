"""Issue 14, item 1 (first half): cancelling now and dunning's give-up close the open period up to that
instant, so the usage since the last close is invoiced (hand-computed figures, on the fake unit of work).

Pro: USD 9.00 a month in advance, USD 2.00 of inference included, inference at USD 0.000001 a micro-USD.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.contracts.messages import (
    CancelSubscription,
    ClosePeriod,
    GiveUpDunning,
)
from shared.domain.calendar import Period
from shared.domain.invoice import InvoiceReason, InvoiceStatus
from shared.domain.subscription import SubscriptionStatus
from tests.unit.worker.test_handlers import FEB_1, JAN_1, JAN_16, Worker

FEB_5 = datetime(2026, 2, 5, tzinfo=UTC)
FEB_15_NOON = datetime(2026, 2, 15, 12, tzinfo=UTC)


@pytest.fixture
def worker() -> Worker:
    return Worker()


def test_cancelling_now_invoices_the_usage_since_the_last_close_less_the_included_credit_plus_tax(
        worker: Worker) -> None:
    sub = worker.subscribe(tax_rate_bps=1000)
    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)
    worker.store.record_usage(sub, "inference", 5_000_000, FEB_5)  # USD 5.00 of inference

    cancel = worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}", reason="too expensive"),
                         FEB_15_NOON)

    assert worker.outcome(cancel) == ("applied", None)
    final = worker.invoices(sub)[-1]
    # usage 5.00, included credit -2.00, tax 10% of 3.00 = 0.30; no fee (February's was paid in advance on
    # the close of January and is not refunded: the policy `none`).
    assert worker.store.lines(final) == [("usage", 500), ("credit", -200), ("tax", 30)]
    assert (final.total.amount_minor, final.status) == (330, InvoiceStatus.OPEN)
    assert (final.key.reason, final.key.period) == (InvoiceReason.PERIOD_CLOSE, Period(FEB_1, FEB_15_NOON))
    assert final.number is not None and worker.result(cancel)["invoice_id"] == final.id
    assert [(a["attempt_no"], a["status"], a["amount_minor"]) for a in worker.attempts(final.id)] == [
        (1, "pending", 330)]
    assert final.id in [e.payload["invoice_id"] for e in worker.store.events("invoice.finalized")]
    state = worker.store.subscriptions[sub].subscription
    assert (state.status, state.cancel_reason, state.cancelled_at) == (
        SubscriptionStatus.CANCELLED, "too expensive", FEB_15_NOON)
    assert worker.store.periods[(sub, FEB_1)]["period_end"] == FEB_15_NOON
    assert worker.store.periods[(sub, FEB_1)]["invoice_id"] == final.id


def test_cancelling_now_twice_or_closing_the_period_afterwards_bills_nothing_more(worker: Worker) -> None:
    sub = worker.subscribe()
    worker.store.record_usage(sub, "inference", 5_000_000, datetime(2026, 1, 5, tzinfo=UTC))
    first = worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), JAN_16)

    again = worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), JAN_16)
    close = worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)

    assert worker.outcome(first) == ("applied", None)
    assert worker.outcome(again) == ("rejected", "invalid_transition") and worker.outcome(close)[0] == "ignored"
    _start, final = worker.invoices(sub)
    assert worker.store.lines(final) == [("usage", 500), ("credit", -200)]
    assert final.key.period == Period(JAN_1, JAN_16)


def test_cancelling_now_with_nothing_to_bill_issues_no_invoice(worker: Worker) -> None:
    sub = worker.subscribe()

    cancel = worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), JAN_16)

    assert worker.outcome(cancel) == ("applied", None) and worker.result(cancel)["invoice_id"] is None
    assert [i.key.reason for i in worker.invoices(sub)] == [InvoiceReason.SUBSCRIPTION_START]
    assert worker.status(sub) is SubscriptionStatus.CANCELLED


def test_cancelling_at_the_period_end_still_bills_the_usage_at_the_close(worker: Worker) -> None:
    sub = worker.subscribe()
    worker.store.record_usage(sub, "inference", 5_000_000, datetime(2026, 1, 5, tzinfo=UTC))

    worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}", at_period_end=True), JAN_16)
    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)

    _start, close = worker.invoices(sub)
    assert worker.store.lines(close) == [("usage", 500), ("credit", -200)]
    assert worker.status(sub) is SubscriptionStatus.CANCELLED


def test_dunning_giving_up_invoices_the_usage_since_the_last_close_and_charges_it(worker: Worker) -> None:
    sub = worker.subscribe(tax_rate_bps=1000)
    [unpaid] = worker.invoices(sub)
    worker.store.record_usage(sub, "inference", 5_000_000, datetime(2026, 1, 5, tzinfo=UTC))

    give_up = worker.send(GiveUpDunning(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=unpaid.id),
                          JAN_16)

    assert worker.outcome(give_up) == ("applied", None)
    start, final = worker.invoices(sub)
    assert start.status is InvoiceStatus.UNCOLLECTIBLE
    assert worker.store.lines(final) == [("usage", 500), ("credit", -200), ("tax", 30)]
    assert (final.total.amount_minor, final.status, final.key.period) == (
        330, InvoiceStatus.OPEN, Period(JAN_1, JAN_16))
    assert [(a["status"], a["amount_minor"]) for a in worker.attempts(final.id)] == [("pending", 330)]
    state = worker.store.subscriptions[sub].subscription
    assert (state.status, state.cancel_reason) == (SubscriptionStatus.CANCELLED, "dunning_gave_up")
