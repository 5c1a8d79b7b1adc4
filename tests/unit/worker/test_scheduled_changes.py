"""Undoing what waits for the period end (issue 14, item 6), through the real bootstrap's handler table and message
bus on the fake unit of work: a change back to the current plan or seats, `subscription.cancel_scheduled_change`
and `subscription.revoke_cancellation`; then the period closes and shows what the customer kept."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.adapters.catalog_file import load_default_catalog
from shared.contracts.envelope import Envelope
from shared.contracts.messages import (
    CancelScheduledChange,
    CancelSubscription,
    ChangePlan,
    ChangeSeats,
    ClosePeriod,
    CreateSubscription,
    RevokeCancellation,
)
from shared.domain.subscription import Subscription, SubscriptionStatus
from tests.unit.worker.test_handlers import Worker as HandlerWorker

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
JAN_20 = datetime(2026, 1, 20, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)
CATALOG = load_default_catalog()


class Worker(HandlerWorker):
    """The handler tests' driver, with one subscription sub_1 of customer cus_1."""

    def subscribe(self, plan: str, seats: int = 1) -> str:
        envelope = self.send(CreateSubscription(subscription_id="sub_1", customer_id="cus_1", plan_id=plan,
                                                seats=seats, currency="USD", payment_method_id="pm_card_visa"), JAN_1)
        assert self.outcome(envelope) == ("applied", None)
        return "sub_1"

    def sub(self) -> Subscription:
        return self.store.subscriptions["sub_1"].subscription

    def close(self, period_end: datetime) -> Envelope:
        envelope = self.send(ClosePeriod(subscription_id="sub_1", customer_id="cus_1", period_end=period_end),
                             period_end)
        assert self.outcome(envelope) == ("applied", None)
        return envelope

    def fee_lines(self) -> list[tuple[str, int]]:
        closes = [i for i in self.store.invoices_of("sub_1") if i.key.reason.value == "period_close"]
        return [line for line in self.store.lines(closes[-1]) if line[0] == "fee"]


@pytest.fixture
def worker() -> Worker:
    return Worker()


def test_a_change_back_to_the_current_plan_cancels_the_scheduled_downgrade_and_the_period_renews_on_it(
        worker: Worker) -> None:
    worker.subscribe("pro")
    downgrade = worker.send(ChangePlan(subscription_id="sub_1", customer_id="cus_1", plan_id="free"), JAN_16)
    assert worker.result(downgrade)["timing"] == "period_end" and worker.sub().pending_plan_id == "free"

    back = worker.send(ChangePlan(subscription_id="sub_1", customer_id="cus_1", plan_id="pro"), JAN_20)

    assert worker.outcome(back) == ("applied", None)
    assert (worker.result(back)["change"], worker.result(back)["invoice_id"]) == ("scheduled_change_cancelled", None)
    assert (worker.sub().pending_plan_id, worker.sub().pending_seats) == (None, None)
    worker.close(FEB_1)
    assert (worker.sub().plan_id, worker.sub().current_period.end) == ("pro", MAR_1)
    assert worker.fee_lines() == [("fee", 900)]  # the next period is billed on pro, not free


def test_a_change_to_the_current_plan_with_nothing_scheduled_is_still_refused(worker: Worker) -> None:
    worker.subscribe("pro")

    same = worker.send(ChangePlan(subscription_id="sub_1", customer_id="cus_1", plan_id="pro"), JAN_16)

    assert worker.outcome(same) == ("rejected", "already_on_plan")
    assert "already on plan pro" in worker.store.outcomes[same.event_id]["error_detail"]


def test_a_change_back_to_the_current_seats_cancels_the_scheduled_seat_reduction(worker: Worker) -> None:
    worker.subscribe("team", seats=3)
    fewer = worker.send(ChangeSeats(subscription_id="sub_1", customer_id="cus_1", seats=1), JAN_16)
    assert worker.result(fewer)["timing"] == "period_end" and worker.sub().pending_seats == 1

    back = worker.send(ChangeSeats(subscription_id="sub_1", customer_id="cus_1", seats=3), JAN_20)

    assert worker.outcome(back) == ("applied", None)
    assert worker.result(back)["change"] == "scheduled_change_cancelled" and worker.sub().pending_seats is None
    worker.close(FEB_1)
    assert worker.sub().seats == 3
    assert worker.fee_lines() == [("fee", 6000)]  # 3 seats x USD 20


def test_the_explicit_cancel_of_a_scheduled_downgrade_keeps_the_plan_and_once_nothing_is_scheduled_refuses(
        worker: Worker) -> None:
    worker.subscribe("pro")
    worker.send(ChangePlan(subscription_id="sub_1", customer_id="cus_1", plan_id="free"), JAN_16)

    undo = worker.send(CancelScheduledChange(subscription_id="sub_1", customer_id="cus_1"), JAN_20)
    again = worker.send(CancelScheduledChange(subscription_id="sub_1", customer_id="cus_1"), JAN_20)

    assert worker.outcome(undo) == ("applied", None) and worker.result(undo)["pending_plan_id"] is None
    assert worker.outcome(again) == ("rejected", "nothing_scheduled")
    worker.close(FEB_1)
    assert worker.sub().plan_id == "pro" and worker.fee_lines() == [("fee", 900)]


def test_revoking_a_cancellation_at_the_period_end_renews_the_subscription(worker: Worker) -> None:
    worker.subscribe("pro")
    worker.send(CancelSubscription(subscription_id="sub_1", customer_id="cus_1", at_period_end=True), JAN_16)

    revoke = worker.send(RevokeCancellation(subscription_id="sub_1", customer_id="cus_1"), JAN_20)
    again = worker.send(RevokeCancellation(subscription_id="sub_1", customer_id="cus_1"), JAN_20)

    assert worker.outcome(revoke) == ("applied", None) and worker.result(revoke)["cancel_at_period_end"] is False
    assert worker.outcome(again) == ("rejected", "nothing_scheduled")
    worker.close(FEB_1)
    assert (worker.sub().status, worker.sub().current_period.end) == (SubscriptionStatus.ACTIVE, MAR_1)
    assert worker.fee_lines() == [("fee", 900)]


def test_undoing_with_nothing_scheduled_is_refused_nothing_scheduled_and_changes_nothing(worker: Worker) -> None:
    worker.subscribe("pro")
    version = worker.sub().version

    undo = worker.send(CancelScheduledChange(subscription_id="sub_1", customer_id="cus_1"), JAN_16)
    revoke = worker.send(RevokeCancellation(subscription_id="sub_1", customer_id="cus_1"), JAN_16)

    assert worker.outcome(undo) == worker.outcome(revoke) == ("rejected", "nothing_scheduled")
    assert worker.sub().version == version
