"""A period close with nothing to bill issues no invoice (issue 14, item 8): a subscription cancelled at the
period end with no usage closed its last period with a numbered 0.00 invoice without lines. The period is
still closed and recorded, and the subscription ends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.contracts.messages import CancelSubscription, ClosePeriod
from shared.domain.subscription import SubscriptionStatus
from tests.unit.worker.test_handlers import FEB_1, JAN_1, JAN_16, Worker


@pytest.fixture
def worker() -> Worker:
    return Worker()


def test_a_cancellation_at_the_period_end_with_nothing_to_bill_closes_without_an_invoice(worker: Worker) -> None:
    sub = worker.subscribe()
    [start] = worker.invoices(sub)
    worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}", at_period_end=True), JAN_16)

    close = worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)

    assert worker.outcome(close) == ("applied", None)
    assert worker.result(close)["invoice_id"] is None
    assert worker.invoices(sub) == [start]  # before: a second, numbered invoice of 0.00 with no lines
    assert worker.status(sub) is SubscriptionStatus.CANCELLED
    period = worker.store.periods[(sub, JAN_1)]
    assert (period["period_end"], period.get("invoice_id")) == (FEB_1, None)


def test_the_same_close_with_usage_still_invoices_it(worker: Worker) -> None:
    sub = worker.subscribe()
    worker.store.record_usage(sub, "inference", 5_000_000, datetime(2026, 1, 5, tzinfo=UTC))
    worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}", at_period_end=True), JAN_16)

    close = worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)

    _start, last = worker.invoices(sub)
    assert worker.result(close)["invoice_id"] == last.id
    assert worker.store.lines(last) == [("usage", 500), ("credit", -200)]
