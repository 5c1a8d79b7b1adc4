from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.dunning import (
    DunningAction,
    DunningCase,
    DunningCaseClosedError,
    DunningPolicy,
    DunningStatus,
    GiveUp,
    NotificationKind,
    Notify,
    RetryPayment,
    RetryTrigger,
    due_actions,
    next_wake_at,
)
from shared.domain.errors import DomainError, InvalidValueError, NaiveDatetimeError

pytestmark = pytest.mark.unit

FIRST_FAILURE = datetime(2025, 5, 20, 14, 30, tzinfo=UTC)


def day(n: float) -> datetime:
    return FIRST_FAILURE + timedelta(days=n)


def new_case(hard: bool = False, policy: DunningPolicy | None = None) -> DunningCase:
    return DunningCase.open(
        case_id="case-1",
        invoice_id="inv-1",
        subscription_id="sub-1",
        failed_at=FIRST_FAILURE,
        hard=hard,
        decline_code="stolen_card" if hard else "insufficient_funds",
        policy=policy,
    )


def carry_out(case: DunningCase, now: datetime) -> tuple[DunningCase, list[DunningAction]]:
    actions = due_actions(case, now)
    for action in actions:
        case = case.record_done(action, now)
    return case, actions


def run_schedule(
    case: DunningCase, until: datetime, step: timedelta = timedelta(hours=1), retries_fail: bool = True
) -> tuple[DunningCase, list[tuple[datetime, DunningAction]]]:
    """Drive the case on a fake clock: do every due action; each retry fails softly when asked to."""
    log: list[tuple[datetime, DunningAction]] = []
    now = case.opened_at
    while now <= until:
        case, actions = carry_out(case, now)
        for action in actions:
            log.append((now, action))
            if isinstance(action, RetryPayment) and retries_fail and case.status is DunningStatus.OPEN:
                case = case.record_failure(hard=False, at=now, decline_code="insufficient_funds")
        now += step
    return case, log


def keys(log: list[tuple[datetime, DunningAction]], kind: type) -> list[str]:
    return [action.key for _, action in log if isinstance(action, kind)]


# --- the scenarios of issue 6 ------------------------------------------------------------------------


def test_failure_then_day_three_retry_that_succeeds_recovers_the_case() -> None:
    case = new_case()
    assert due_actions(case, FIRST_FAILURE) == []

    case, on_day_one = carry_out(case, day(1))
    assert on_day_one == [Notify(NotificationKind.PAYMENT_FAILED, 1)]
    assert due_actions(case, day(2.9)) == []

    case, on_day_three = carry_out(case, day(3))
    assert on_day_three == [RetryPayment(3)]  # the reminder waits for the retry's outcome
    assert due_actions(case, day(3)) == []

    case = case.record_success(day(3) + timedelta(minutes=1))
    assert case.status is DunningStatus.RECOVERED
    assert due_actions(case, day(5)) == []
    assert due_actions(case, day(14)) == []
    assert next_wake_at(case, day(3)) is None


def test_four_failures_give_up_on_day_14_after_reminders_on_days_1_3_7_and_a_final_notice() -> None:
    case, log = run_schedule(new_case(), until=day(20))

    assert case.attempts == 4
    assert keys(log, RetryPayment) == ["retry:3", "retry:5", "retry:7"]
    assert keys(log, Notify) == ["notify:1", "notify:3", "notify:7", "notify:final"]
    assert [(at, action) for at, action in log if isinstance(action, GiveUp)] == [(day(14), GiveUp(14))]
    assert case.status is DunningStatus.GIVEN_UP
    assert case.closed_at == day(14)
    final = [action for _, action in log if isinstance(action, Notify)][-1]
    assert final.kind is NotificationKind.SUBSCRIPTION_CANCELLED


def test_retries_happen_exactly_on_their_days_after_the_first_failure() -> None:
    _, log = run_schedule(new_case(), until=day(14))

    assert [at for at, action in log if isinstance(action, RetryPayment)] == [day(3), day(5), day(7)]


def test_hard_decline_skips_retries_notifies_at_once_and_gives_up_on_day_fourteen() -> None:
    case = new_case(hard=True)

    assert due_actions(case, FIRST_FAILURE) == [Notify(NotificationKind.PAYMENT_METHOD_REQUIRED, 0, 1)]

    case, log = run_schedule(case, until=day(15))
    assert keys(log, RetryPayment) == []
    assert keys(log, Notify) == [
        "notify:payment_method_required:1",
        "notify:1",
        "notify:3",
        "notify:7",
        "notify:final",
    ]
    assert keys(log, GiveUp) == ["give_up"]


def test_hard_decline_on_a_retry_stops_the_remaining_retries() -> None:
    case, _ = carry_out(new_case(), day(1))
    case, _ = carry_out(case, day(3))
    case = case.record_failure(hard=True, at=day(3), decline_code="lost_card")

    assert due_actions(case, day(3)) == [Notify(NotificationKind.PAYMENT_METHOD_REQUIRED, 3, 1)]
    case, log = run_schedule(case, until=day(13))
    assert keys(log, RetryPayment) == []


def test_payment_method_update_triggers_an_immediate_retry_that_can_recover() -> None:
    case = new_case(hard=True)
    case, _ = carry_out(case, FIRST_FAILURE)

    case, _ = carry_out(case, day(1))

    case = case.payment_method_updated(day(2))

    assert due_actions(case, day(2)) == [RetryPayment(2, RetryTrigger.PAYMENT_METHOD_UPDATED, 1)]
    case, _ = carry_out(case, day(2))
    case = case.record_success(day(2))
    assert case.status is DunningStatus.RECOVERED


def test_payment_method_update_resumes_the_schedule_after_a_hard_decline() -> None:
    case, _ = carry_out(new_case(hard=True), FIRST_FAILURE)
    case = case.payment_method_updated(day(2))
    case, _ = carry_out(case, day(2))
    case = case.record_failure(hard=False, at=day(2), decline_code="insufficient_funds")

    _, log = run_schedule(case, until=day(8))

    assert keys(log, RetryPayment) == ["retry:3", "retry:5", "retry:7"]


def test_payment_method_update_on_a_retry_day_retries_once_not_twice() -> None:
    case = new_case().payment_method_updated(day(5))

    due = [action for action in due_actions(case, day(5)) if isinstance(action, RetryPayment)]
    assert due == [RetryPayment(5, RetryTrigger.PAYMENT_METHOD_UPDATED, 1)]

    case, _ = carry_out(case, day(5))
    case = case.record_failure(hard=False, at=day(5))
    assert [a for a in due_actions(case, day(6)) if isinstance(a, RetryPayment)] == []
    assert [a for a in due_actions(case, day(7)) if isinstance(a, RetryPayment)] == [RetryPayment(7)]


def test_second_payment_method_update_gets_its_own_retry() -> None:
    case = new_case().payment_method_updated(day(1))
    case, _ = carry_out(case, day(1))
    case = case.record_failure(hard=False, at=day(1)).payment_method_updated(day(2))

    assert RetryPayment(2, RetryTrigger.PAYMENT_METHOD_UPDATED, 2) in due_actions(case, day(2))


def test_payment_method_update_after_recovery_is_ignored() -> None:
    case = new_case().record_success(day(1))

    assert case.payment_method_updated(day(2)) is case


# --- once-only ---------------------------------------------------------------------------------------


def test_due_actions_is_idempotent_until_recorded_and_empty_after() -> None:
    case = new_case()

    first = due_actions(case, day(3))
    assert due_actions(case, day(3)) == first

    case, _ = carry_out(case, day(3))
    assert due_actions(case, day(3)) == []
    assert due_actions(case, day(4)) == []


def test_every_action_has_a_stable_key_for_the_adapters_unique_constraint() -> None:
    assert RetryPayment(3).key == "retry:3"
    assert RetryPayment(4, RetryTrigger.PAYMENT_METHOD_UPDATED, 1).key == "retry:payment_method:1"
    assert Notify(NotificationKind.PAYMENT_FAILED, 1).key == "notify:1"
    assert Notify(NotificationKind.PAYMENT_METHOD_REQUIRED, 0, 2).key == "notify:payment_method_required:2"
    assert Notify(NotificationKind.SUBSCRIPTION_CANCELLED, 14).key == "notify:final"
    assert GiveUp(14).key == "give_up"


def test_recording_an_action_twice_changes_nothing() -> None:
    case = new_case().record_done(RetryPayment(3), day(3))

    assert case.record_done(RetryPayment(3), day(4)) is case


def test_service_down_for_days_catches_up_with_one_retry_and_one_reminder() -> None:
    case = new_case()

    assert due_actions(case, day(6)) == [RetryPayment(5)]
    retried = case.record_done(RetryPayment(5), day(6))
    assert due_actions(retried, day(6)) == []  # the reminder waits for that retry's outcome
    assert due_actions(retried.record_failure(False, day(6)), day(6)) == [Notify(NotificationKind.PAYMENT_FAILED, 3)]


def test_a_reminder_is_never_offered_beside_a_retry_nor_while_its_outcome_is_awaited() -> None:
    """Issue 14: the day-3 "payment failed" went out at the same instant as the day-3 retry that paid."""
    case, _ = carry_out(new_case(), day(1))
    assert due_actions(case, day(3)) == [RetryPayment(3)]
    case = case.record_done(RetryPayment(3), day(3))
    assert due_actions(case, day(3) + timedelta(hours=2)) == []

    paid = case.record_success(day(3) + timedelta(minutes=5))
    failed = case.record_failure(False, day(3) + timedelta(minutes=5))

    assert due_actions(paid, day(3) + timedelta(minutes=5)) == []
    assert due_actions(failed, day(3) + timedelta(minutes=5)) == [Notify(NotificationKind.PAYMENT_FAILED, 3)]
    updated = failed.payment_method_updated(day(3) + timedelta(minutes=6))  # an immediate retry: it waits again
    assert due_actions(updated, day(3) + timedelta(minutes=6)) == [
        RetryPayment(3, RetryTrigger.PAYMENT_METHOD_UPDATED, 1)]


def test_service_down_until_after_the_give_up_day_only_gives_up() -> None:
    assert due_actions(new_case(), day(30)) == [
        GiveUp(14),
        Notify(NotificationKind.SUBSCRIPTION_CANCELLED, 14),
    ]


def test_final_notice_is_still_due_if_only_the_give_up_was_recorded() -> None:
    case = new_case().record_done(GiveUp(14), day(14))

    assert case.status is DunningStatus.GIVEN_UP
    assert due_actions(case, day(14)) == [Notify(NotificationKind.SUBSCRIPTION_CANCELLED, 14)]


# --- closed cases and validation ---------------------------------------------------------------------


def test_failure_on_a_recovered_case_is_refused() -> None:
    case = new_case().record_success(day(1))

    with pytest.raises(DunningCaseClosedError):
        case.record_failure(hard=False, at=day(2))


def test_success_after_give_up_is_refused_and_success_twice_is_harmless() -> None:
    given_up, _ = run_schedule(new_case(), until=day(14))
    with pytest.raises(DunningCaseClosedError):
        given_up.record_success(day(15))

    recovered = new_case().record_success(day(1))
    assert recovered.record_success(day(2)) == recovered


def test_dunning_errors_belong_to_the_domain_family() -> None:
    assert issubclass(DunningCaseClosedError, DomainError)


def test_hard_decline_codes_are_recognised() -> None:
    policy = DunningPolicy()

    assert policy.is_hard_decline("stolen_card")
    assert policy.is_hard_decline("lost_card")
    assert policy.is_hard_decline("invalid_account")
    assert not policy.is_hard_decline("insufficient_funds")
    assert not policy.is_hard_decline(None)


@pytest.mark.parametrize(
    "changes",
    [
        {"retry_offsets_days": (3, 14)},
        {"retry_offsets_days": (5, 3)},
        {"notify_offsets_days": (0, 3)},
        {"notify_offsets_days": (1, 1)},
        {"give_up_after_days": 0},
    ],
)
def test_policy_with_offsets_out_of_order_or_outside_the_campaign_is_refused(
    changes: dict[str, object],
) -> None:
    with pytest.raises(InvalidValueError):
        DunningPolicy(**changes)  # type: ignore[arg-type]


def test_custom_policy_drives_the_schedule() -> None:
    policy = DunningPolicy(retry_offsets_days=(1,), notify_offsets_days=(2,), give_up_after_days=4)

    case, log = run_schedule(new_case(policy=policy), until=day(5))

    assert keys(log, RetryPayment) == ["retry:1"]
    assert keys(log, Notify) == ["notify:2", "notify:final"]
    assert case.closed_at == day(4)


def test_naive_instants_are_refused() -> None:
    with pytest.raises(NaiveDatetimeError):
        due_actions(new_case(), datetime(2025, 5, 21))


def test_next_wake_is_the_next_schedule_day_once_due_actions_are_done() -> None:
    case = new_case()
    assert next_wake_at(case, FIRST_FAILURE) == day(1)

    assert next_wake_at(case, day(3.5)) == day(3.5)  # retry 3 and the day-3 reminder are overdue
    case, _ = run_schedule(case, until=day(3.5))
    assert next_wake_at(case, day(3.5)) == day(5)

    case, _ = run_schedule(case, until=day(13))
    assert next_wake_at(case, day(13)) == day(14)

    hard, _ = carry_out(new_case(hard=True), FIRST_FAILURE)
    hard, _ = carry_out(hard, day(3))
    assert next_wake_at(hard, day(3)) == day(7)


def test_next_wake_is_now_while_something_is_due_and_none_once_closed() -> None:
    overdue = new_case()
    assert next_wake_at(overdue, day(20)) == day(20)

    given_up = overdue.record_done(GiveUp(14), day(20))
    assert next_wake_at(given_up, day(20)) == day(20)  # the final notice is still due
    finished = given_up.record_done(Notify(NotificationKind.SUBSCRIPTION_CANCELLED, 14), day(20))
    assert next_wake_at(finished, day(20)) is None


# --- properties --------------------------------------------------------------------------------------

events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=40),  # hours to advance
        st.sampled_from(["tick", "tick", "tick", "soft_fail", "hard_fail", "success", "pm_update"]),
    ),
    max_size=80,
)


@settings(max_examples=200)
@given(events=events)
def test_no_action_is_ever_offered_twice_or_left_due_after_being_recorded(
    events: list[tuple[int, str]],
) -> None:
    case = new_case()
    now = FIRST_FAILURE
    carried_out: list[str] = []
    for hours, event in events:
        now += timedelta(hours=hours)
        if case.status is DunningStatus.OPEN:
            if event == "soft_fail":
                case = case.record_failure(hard=False, at=now)
            elif event == "hard_fail":
                case = case.record_failure(hard=True, at=now)
            elif event == "success":
                case = case.record_success(now)
            elif event == "pm_update":
                case = case.payment_method_updated(now)

        # A reminder held back beside a retry may become due once the retry is recorded (here failures are
        # recorded without retries, so a retry is not always awaited): carry out until nothing is due.
        due = due_actions(case, now)
        while due:
            assert due_actions(case, now) == due
            assert sum(isinstance(action, RetryPayment) for action in due) <= 1
            if any(isinstance(action, RetryPayment) for action in due):
                assert not any(isinstance(a, Notify) and a.kind is NotificationKind.PAYMENT_FAILED for a in due)
            for action in due:
                assert action.key not in carried_out
                if isinstance(action, GiveUp):
                    assert now >= day(14)
                if isinstance(action, RetryPayment) and action.trigger is RetryTrigger.SCHEDULE:
                    assert not case.retries_suspended
                if case.status is not DunningStatus.OPEN:
                    assert action == Notify(NotificationKind.SUBSCRIPTION_CANCELLED, 14)
                case = case.record_done(action, now)
                carried_out.append(action.key)
            due = due_actions(case, now)

        assert due_actions(case, now) == []
    assert len(carried_out) == len(set(carried_out))
    scheduled = [key for key in carried_out if key.startswith("retry:") and "payment_method" not in key]
    assert len(scheduled) <= len(case.policy.retry_offsets_days)


# --- abandoning a case that has nothing left to collect ------------------------------------------------


def test_abandoning_an_open_case_closes_it_without_a_give_up_or_final_notice() -> None:
    case, _ = run_schedule(new_case(), until=day(4))
    abandoned = case.abandon(day(4.5), "invoice_voided")
    assert (abandoned.status, abandoned.closed_at, abandoned.abandon_reason) == (
        DunningStatus.GIVEN_UP,
        day(4.5),
        "invoice_voided",
    )
    assert abandoned.is_abandoned
    assert not abandoned.is_done("give_up")
    for later in (day(5), day(7), day(14), day(30)):
        assert due_actions(abandoned, later) == []
        assert next_wake_at(abandoned, later) is None


def test_an_abandoned_case_stays_abandoned_when_rebuilt_from_storage_without_its_reason() -> None:
    abandoned = new_case().abandon(day(2), "subscription_cancelled")
    reloaded = DunningCase(
        case_id=abandoned.case_id,
        invoice_id=abandoned.invoice_id,
        subscription_id=abandoned.subscription_id,
        opened_at=abandoned.opened_at,
        status=abandoned.status,
        failures=abandoned.failures,
        completed=abandoned.completed,
        closed_at=abandoned.closed_at,
    )
    assert reloaded.is_abandoned
    assert due_actions(reloaded, day(14)) == []


def test_a_case_that_gave_up_on_schedule_is_not_abandoned_and_still_sends_its_final_notice() -> None:
    case = new_case()
    given_up = case.record_done(GiveUp(14), day(14))
    assert given_up.status is DunningStatus.GIVEN_UP and not given_up.is_abandoned
    assert [action.key for action in due_actions(given_up, day(14))] == ["notify:final"]


def test_abandoning_a_closed_case_changes_nothing() -> None:
    recovered = new_case().record_success(day(3))
    assert recovered.abandon(day(4), "invoice_voided") is recovered
    given_up, _ = run_schedule(new_case(), until=day(14))
    assert given_up.abandon(day(15), "invoice_voided") is given_up
    abandoned = new_case().abandon(day(1), "invoice_voided")
    assert abandoned.abandon(day(2), "subscription_cancelled") is abandoned


def test_an_abandoned_case_refuses_new_failures() -> None:
    abandoned = new_case().abandon(day(1), "invoice_voided")
    with pytest.raises(DunningCaseClosedError):
        abandoned.record_failure(hard=False, at=day(2))


def test_abandoning_needs_a_reason_and_an_aware_instant() -> None:
    with pytest.raises(InvalidValueError):
        new_case().abandon(day(1), " ")
    with pytest.raises(NaiveDatetimeError):
        new_case().abandon(datetime(2025, 5, 21), "invoice_voided")
