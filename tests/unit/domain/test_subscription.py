from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.calendar import BillingAnchor, Interval, Period
from shared.domain.catalog import ChangeTiming, PlanId
from shared.domain.errors import InvalidTransitionError, SubscriptionError
from shared.domain.events import (
    BillingIntervalChanged,
    CancellationScheduled,
    PeriodAdvanced,
    PlanChanged,
    PlanChangeScheduled,
    SeatChangeScheduled,
    SeatsChanged,
    SubscriptionCancelled,
    SubscriptionStarted,
    TrialEnded,
    event_payload,
)
from shared.domain.ids import CustomerId, SubscriptionId
from shared.domain.money import Money
from shared.domain.subscription import ALLOWED_TRANSITIONS, ChangeKind, Subscription, SubscriptionStatus

pytestmark = pytest.mark.unit

S = SubscriptionStatus
CATALOG = load_default_catalog()
JAN_1 = datetime(2024, 1, 1, tzinfo=UTC)
HALFWAY = datetime(2024, 1, 16, 12, tzinfo=UTC)


def subscribe(plan_id: str = "basic_monthly", *, at: datetime = JAN_1, **kwargs: object) -> Subscription:
    kwargs.setdefault("trial_days", 0)
    return Subscription.start(
        subscription_id=SubscriptionId("sub_1"),
        customer_id=CustomerId("cus_1"),
        plan=CATALOG.plan(plan_id),
        at=at,
        **kwargs,  # type: ignore[arg-type]
    )


def in_status(status: SubscriptionStatus) -> Subscription:
    """A rehydrated subscription in ``status`` (as a repository would load it)."""
    trialing = status is S.TRIALING
    return Subscription(
        id=SubscriptionId("sub_1"),
        customer_id=CustomerId("cus_1"),
        plan_id=PlanId("basic_monthly"),
        status=status,
        seats=1,
        interval=Interval.MONTH,
        anchor=BillingAnchor(day=15),
        current_period=Period(JAN_1, datetime(2024, 1, 15, tzinfo=UTC))
        if trialing
        else Period(datetime(2024, 1, 15, tzinfo=UTC), datetime(2024, 2, 15, tzinfo=UTC)),
        started_at=JAN_1,
        trial_end=datetime(2024, 1, 15, tzinfo=UTC) if trialing else None,
        version=3,
    )


# --- the state machine ---------------------------------------------------------------------------


def test_transition_table_is_exactly_the_one_in_the_requirements():
    assert dict(ALLOWED_TRANSITIONS) == {
        S.TRIALING: {S.ACTIVE, S.CANCELLED, S.PAST_DUE},
        S.ACTIVE: {S.PAST_DUE, S.CANCELLED, S.PAUSED},
        S.PAST_DUE: {S.ACTIVE, S.CANCELLED},
        S.PAUSED: {S.ACTIVE, S.CANCELLED},
        S.CANCELLED: set(),
    }


AFTER_TRIAL = datetime(2024, 1, 16, tzinfo=UTC)
COMMANDS = {
    "end_trial_with_payment_method": lambda sub: sub.end_trial(
        at=AFTER_TRIAL, has_payment_method=True, plan=CATALOG.plan("basic_monthly")
    ),
    "end_trial_without_payment_method": lambda sub: sub.end_trial(
        at=AFTER_TRIAL, has_payment_method=False, plan=CATALOG.plan("basic_monthly")
    ),
    "mark_past_due": lambda sub: sub.mark_past_due(at=AFTER_TRIAL),
    "reactivate": lambda sub: sub.reactivate(at=AFTER_TRIAL),
    "pause": lambda sub: sub.pause(at=AFTER_TRIAL),
    "resume": lambda sub: sub.resume(at=AFTER_TRIAL),
    "cancel": lambda sub: sub.cancel(at=AFTER_TRIAL),
}


@pytest.mark.parametrize(
    ("start", "command", "end"),
    [
        (S.TRIALING, "end_trial_with_payment_method", S.ACTIVE),
        (S.TRIALING, "cancel", S.CANCELLED),
        (S.TRIALING, "end_trial_without_payment_method", S.PAST_DUE),
        (S.TRIALING, "mark_past_due", S.PAST_DUE),
        (S.ACTIVE, "mark_past_due", S.PAST_DUE),
        (S.ACTIVE, "cancel", S.CANCELLED),
        (S.ACTIVE, "pause", S.PAUSED),
        (S.PAST_DUE, "reactivate", S.ACTIVE),
        (S.PAST_DUE, "cancel", S.CANCELLED),
        (S.PAUSED, "resume", S.ACTIVE),
        (S.PAUSED, "cancel", S.CANCELLED),
    ],
)
def test_every_listed_transition_is_reachable(start, command, end):
    subscription = in_status(start)
    COMMANDS[command](subscription)
    assert subscription.status is end
    assert subscription.version == 4
    assert len(subscription.pending_events) == 1


@pytest.mark.parametrize("start", list(S))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_command_performs_an_unlisted_transition(start, command):
    subscription = in_status(start)
    try:
        COMMANDS[command](subscription)
    except (InvalidTransitionError, SubscriptionError):
        assert subscription.status is start
        assert subscription.pending_events == []
    else:
        assert subscription.status in ALLOWED_TRANSITIONS[start]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(COMMANDS)), max_size=12))
def test_any_command_sequence_stays_inside_the_transition_table(commands):
    subscription = in_status(S.TRIALING)
    for command in commands:
        before = subscription.status
        try:
            COMMANDS[command](subscription)
        except (InvalidTransitionError, SubscriptionError):
            assert subscription.status is before
        else:
            assert subscription.status in ALLOWED_TRANSITIONS[before]
    versions = [event.version for event in subscription.pending_events]
    assert versions == list(range(4, 4 + len(versions)))


def test_invalid_transition_error_names_both_states():
    subscription = in_status(S.CANCELLED)
    with pytest.raises(InvalidTransitionError) as error:
        subscription.pause(at=AFTER_TRIAL)
    assert (error.value.current, error.value.requested) == ("cancelled", "paused")
    assert "cancelled" in str(error.value) and "paused" in str(error.value)


# --- starting and trials -------------------------------------------------------------------------


def test_subscribing_without_trial_is_active_and_anchored_at_the_start():
    subscription = subscribe("basic_monthly", at=datetime(2024, 1, 31, 10, tzinfo=UTC))
    assert subscription.status is S.ACTIVE
    assert subscription.current_period == Period(
        datetime(2024, 1, 31, 10, tzinfo=UTC), datetime(2024, 2, 29, 10, tzinfo=UTC)
    )
    [event] = subscription.pull_events()
    assert isinstance(event, SubscriptionStarted)
    assert (event.version, event.subscription_id, event.occurred_at.tzinfo) == (1, "sub_1", UTC)


def test_a_trial_anchors_billing_at_the_trial_end():
    subscription = subscribe("basic_monthly", trial_days=None)  # the plan's 14 days
    assert subscription.status is S.TRIALING
    assert subscription.trial_end == datetime(2024, 1, 15, tzinfo=UTC)
    assert subscription.anchor.day == 15


def test_trial_end_with_payment_method_starts_the_first_paid_period():
    subscription = subscribe("basic_monthly", trial_days=None)
    subscription.end_trial(
        at=datetime(2024, 1, 15, 0, 5, tzinfo=UTC), has_payment_method=True, plan=CATALOG.plan("basic_monthly")
    )
    assert subscription.status is S.ACTIVE
    assert subscription.current_period == Period(datetime(2024, 1, 15, tzinfo=UTC), datetime(2024, 2, 15, tzinfo=UTC))


def test_trial_end_without_payment_method_goes_past_due_or_cancels_per_plan():
    basic = subscribe("basic_monthly", trial_days=None)
    basic.end_trial(at=datetime(2024, 1, 15, tzinfo=UTC), has_payment_method=False, plan=CATALOG.plan("basic_monthly"))
    assert basic.status is S.PAST_DUE
    premium = subscribe("premium_monthly", trial_days=None)
    premium.end_trial(
        at=datetime(2024, 1, 8, tzinfo=UTC), has_payment_method=False, plan=CATALOG.plan("premium_monthly")
    )
    assert premium.status is S.CANCELLED
    assert isinstance(premium.pull_events()[-1], TrialEnded)


def test_a_trial_cannot_end_early_without_a_payment_method():
    subscription = subscribe("basic_monthly", trial_days=None)
    with pytest.raises(SubscriptionError):
        subscription.end_trial(
            at=datetime(2024, 1, 5, tzinfo=UTC), has_payment_method=False, plan=CATALOG.plan("basic_monthly")
        )


# --- plan, seat and interval changes --------------------------------------------------------------


def test_upgrade_applies_at_once_with_stripes_worked_proration():
    subscription = subscribe("basic_monthly")
    outcome = subscription.change_plan(
        new_plan=CATALOG.plan("premium_monthly"), current_plan=CATALOG.plan("basic_monthly"), at=HALFWAY
    )
    assert (outcome.kind, outcome.timing) == (ChangeKind.UPGRADE, ChangeTiming.IMMEDIATE)
    assert [line.amount for line in outcome.lines] == [Money(-500, "USD"), Money(1000, "USD")]
    assert subscription.plan_id == "premium_monthly"
    assert outcome.invoice_period == Period(HALFWAY, datetime(2024, 2, 1, tzinfo=UTC))
    assert isinstance(subscription.pull_events()[-1], PlanChanged)


def test_downgrade_waits_for_the_period_end_and_then_applies():
    subscription = subscribe("premium_monthly")
    outcome = subscription.change_plan(
        new_plan=CATALOG.plan("basic_monthly"), current_plan=CATALOG.plan("premium_monthly"), at=HALFWAY
    )
    assert (outcome.kind, outcome.timing, outcome.lines) == (ChangeKind.DOWNGRADE, ChangeTiming.PERIOD_END, ())
    assert (subscription.plan_id, subscription.pending_plan_id) == ("premium_monthly", "basic_monthly")
    closed = subscription.advance_period(at=datetime(2024, 2, 1, tzinfo=UTC))
    assert closed.end == datetime(2024, 2, 1, tzinfo=UTC)
    assert (subscription.plan_id, subscription.pending_plan_id) == ("basic_monthly", None)
    kinds = [type(event) for event in subscription.pull_events()]
    assert kinds[-2:] == [PlanChangeScheduled, PeriodAdvanced]


def test_downgrade_is_immediate_and_prorated_when_the_plan_says_so():
    subscription = subscribe("premium_monthly_immediate")
    outcome = subscription.change_plan(
        new_plan=CATALOG.plan("basic_monthly"), current_plan=CATALOG.plan("premium_monthly_immediate"), at=HALFWAY
    )
    assert outcome.timing is ChangeTiming.IMMEDIATE
    assert [line.amount for line in outcome.lines] == [Money(-1000, "USD"), Money(500, "USD")]


def test_adding_seats_is_prorated_now_and_removing_them_waits():
    subscription = subscribe("team", seats=2)
    more = subscription.change_seats(seats=4, plan=CATALOG.plan("team"), at=HALFWAY)
    assert [line.amount for line in more.lines] == [Money(-2000, "USD"), Money(4000, "USD")]
    assert subscription.seats == 4
    fewer = subscription.change_seats(seats=3, plan=CATALOG.plan("team"), at=HALFWAY + timedelta(days=1))
    assert fewer.timing is ChangeTiming.PERIOD_END and subscription.seats == 4
    subscription.advance_period(at=datetime(2024, 2, 1, tzinfo=UTC))
    assert subscription.seats == 3
    kinds = [type(event) for event in subscription.pull_events()]
    assert kinds == [SubscriptionStarted, SeatsChanged, SeatChangeScheduled, PeriodAdvanced]


def test_monthly_to_yearly_re_anchors_and_credits_the_unused_month():
    subscription = subscribe("premium_monthly")
    outcome = subscription.change_plan(
        new_plan=CATALOG.plan("premium_yearly"), current_plan=CATALOG.plan("premium_monthly"), at=HALFWAY
    )
    assert outcome.kind is ChangeKind.INTERVAL
    assert [line.amount for line in outcome.lines] == [Money(-1000, "USD"), Money(20000, "USD")]
    assert subscription.interval is Interval.YEAR
    assert subscription.current_period == Period(HALFWAY, datetime(2025, 1, 16, 12, tzinfo=UTC))
    assert isinstance(subscription.pull_events()[-1], BillingIntervalChanged)


def test_a_metered_plan_cannot_change_interval_because_its_partial_period_usage_would_go_unbilled():
    monthly = CATALOG.plan("pro")
    yearly = replace(monthly, id=PlanId("pro_yearly"), interval=Interval.YEAR)
    subscription = subscribe("pro")
    with pytest.raises(SubscriptionError, match="metered"):
        subscription.change_plan(new_plan=yearly, current_plan=monthly, at=HALFWAY)
    assert subscription.interval is Interval.MONTH and subscription.plan_id == "pro"


def test_plan_changes_are_refused_while_past_due():
    subscription = in_status(S.PAST_DUE)
    with pytest.raises(SubscriptionError):
        subscription.change_plan(
            new_plan=CATALOG.plan("premium_monthly"), current_plan=CATALOG.plan("basic_monthly"), at=HALFWAY
        )


# --- cancellation, pause, periods ------------------------------------------------------------------


def test_cancel_at_period_end_keeps_service_until_the_period_closes():
    subscription = subscribe("basic_monthly")
    subscription.cancel(at=HALFWAY, at_period_end=True)
    assert subscription.status is S.ACTIVE and subscription.cancel_at_period_end
    assert not subscription.is_billable
    subscription.advance_period(at=datetime(2024, 2, 1, tzinfo=UTC))
    assert subscription.status is S.CANCELLED
    events = subscription.pull_events()
    assert [type(event) for event in events[-2:]] == [CancellationScheduled, SubscriptionCancelled]
    assert events[-1].occurred_at == datetime(2024, 2, 1, tzinfo=UTC)


def test_a_period_cannot_be_advanced_before_it_ends():
    subscription = subscribe("basic_monthly")
    with pytest.raises(SubscriptionError):
        subscription.advance_period(at=HALFWAY)


def test_advancing_36_times_keeps_the_month_end_anchor():
    subscription = subscribe("basic_monthly", at=datetime(2024, 1, 31, tzinfo=UTC))
    ends = []
    for _ in range(36):
        ends.append(subscription.advance_period(at=subscription.current_period.end).end)
    assert ends[:3] == [
        datetime(2024, 2, 29, tzinfo=UTC),
        datetime(2024, 3, 31, tzinfo=UTC),
        datetime(2024, 4, 30, tzinfo=UTC),
    ]
    assert ends[-1] == datetime(2027, 1, 31, tzinfo=UTC)


def test_pause_and_resume_record_events_and_keep_the_anchor():
    subscription = subscribe("basic_monthly")
    subscription.pause(at=HALFWAY)
    subscription.resume(at=HALFWAY + timedelta(days=2))
    assert subscription.status is S.ACTIVE and subscription.anchor.day == 1
    assert [event.version for event in subscription.pull_events()] == [1, 2, 3]


def test_events_serialise_to_json_ready_primitives_for_the_outbox():
    subscription = subscribe("premium_monthly")
    subscription.change_plan(
        new_plan=CATALOG.plan("basic_monthly"), current_plan=CATALOG.plan("premium_monthly"), at=HALFWAY
    )
    subscription.cancel_scheduled_change(at=HALFWAY)
    started, scheduled, dropped = subscription.pull_events()
    assert event_payload(started)["period"] == {
        "start": "2024-01-01T00:00:00+00:00",
        "end": "2024-02-01T00:00:00+00:00",
    }
    assert event_payload(scheduled)["effective_at"] == "2024-02-01T00:00:00+00:00"
    assert event_payload(dropped) == {
        "subscription_id": "sub_1",
        "version": 3,
        "occurred_at": "2024-01-16T12:00:00+00:00",
        "pending_plan_id": "basic_monthly",
        "pending_seats": None,
    }
    assert subscription.pull_events() == []
