"""The subscription aggregate undoes what waits for the period end (issue 14, item 6): a change back to the
current plan or seats cancels the scheduled change; with nothing scheduled the undo is `nothing_scheduled`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.catalog import ChangeTiming
from shared.domain.errors import SubscriptionError
from shared.domain.events import ScheduledChangeCancelled
from shared.domain.ids import CustomerId, SubscriptionId
from shared.domain.subscription import ChangeKind, NothingScheduledError, Subscription
from shared.errors import refusal_code

CATALOG = load_default_catalog()
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
JAN_20 = datetime(2026, 1, 20, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


def subscribe(plan_id: str, seats: int = 1) -> Subscription:
    return Subscription.start(subscription_id=SubscriptionId("sub_1"), customer_id=CustomerId("cus_1"),
                              plan=CATALOG.plan(plan_id), at=JAN_1, seats=seats, trial_days=0)


def test_a_change_back_to_the_current_plan_drops_the_scheduled_downgrade_and_bills_nothing() -> None:
    sub = subscribe("pro")
    sub.change_plan(new_plan=CATALOG.plan("free"), current_plan=CATALOG.plan("pro"), at=JAN_16)
    sub.pull_events()

    outcome = sub.change_plan(new_plan=CATALOG.plan("pro"), current_plan=CATALOG.plan("pro"), at=JAN_20)

    assert (outcome.kind, outcome.timing, outcome.effective_at, outcome.lines, outcome.grants) == (
        ChangeKind.SCHEDULED_CHANGE_CANCELLED, ChangeTiming.IMMEDIATE, JAN_20, (), ())
    assert (sub.pending_plan_id, sub.pending_seats, sub.next_plan_id) == (None, None, "pro")
    [event] = sub.pull_events()
    assert isinstance(event, ScheduledChangeCancelled) and event.pending_plan_id == "free"
    sub.advance_period(at=FEB_1)
    assert sub.plan_id == "pro"


def test_a_change_back_to_the_current_seats_drops_the_scheduled_seat_reduction() -> None:
    sub = subscribe("team", seats=3)
    sub.change_seats(seats=1, plan=CATALOG.plan("team"), at=JAN_16)

    outcome = sub.change_seats(seats=3, plan=CATALOG.plan("team"), at=JAN_20)

    assert outcome.kind is ChangeKind.SCHEDULED_CHANGE_CANCELLED and sub.pending_seats is None
    sub.advance_period(at=FEB_1)
    assert sub.seats == 3


def test_the_current_plan_or_seats_with_nothing_scheduled_is_refused_as_before() -> None:
    pro, team = subscribe("pro"), subscribe("team", seats=3)
    with pytest.raises(SubscriptionError, match="already on plan pro"):
        pro.change_plan(new_plan=CATALOG.plan("pro"), current_plan=CATALOG.plan("pro"), at=JAN_16)
    with pytest.raises(SubscriptionError, match="already has 3 seats"):
        team.change_seats(seats=3, plan=CATALOG.plan("team"), at=JAN_16)


def test_the_current_seats_do_not_undo_a_scheduled_plan_change() -> None:
    sub = subscribe("enterprise", seats=3)
    sub.change_plan(new_plan=CATALOG.plan("team"), current_plan=CATALOG.plan("enterprise"), at=JAN_16)

    with pytest.raises(SubscriptionError, match="already has 3 seats"):
        sub.change_seats(seats=3, plan=CATALOG.plan("enterprise"), at=JAN_20)
    assert sub.pending_plan_id == "team"


def test_undoing_with_nothing_scheduled_is_refused_with_the_code_nothing_scheduled() -> None:
    sub = subscribe("pro")
    with pytest.raises(NothingScheduledError) as no_change:
        sub.cancel_scheduled_change(at=JAN_16)
    with pytest.raises(NothingScheduledError) as no_cancel:
        sub.revoke_cancellation(at=JAN_16)
    assert refusal_code(no_change.value) == refusal_code(no_cancel.value) == "nothing_scheduled"
    assert isinstance(no_change.value, SubscriptionError) and sub.version == 1


def test_a_revoked_cancellation_at_the_period_end_renews() -> None:
    sub = subscribe("pro")
    sub.cancel(at=JAN_16, at_period_end=True)
    sub.revoke_cancellation(at=JAN_20)
    sub.advance_period(at=FEB_1)
    assert sub.status.value == "active" and sub.current_period.start == FEB_1
