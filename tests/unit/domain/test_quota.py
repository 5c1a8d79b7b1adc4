from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.calendar import Period, calendar_month
from shared.domain.errors import InvalidValueError
from shared.domain.quota import (
    ForecastRule,
    MonthlyUsage,
    OrgQuotaState,
    QuotaDenialReason,
    TrialAllowance,
    consume,
    crossed_thresholds,
    decide,
    decide_on_count,
    effective_allotment,
    forecast_limit,
    remaining,
)

pytestmark = pytest.mark.unit

MARCH_10 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
MARCH = calendar_month(MARCH_10)


def basic_plan(**changes: object) -> OrgQuotaState:
    return replace(OrgQuotaState(plan_monthly_reports=100), **changes)  # type: ignore[arg-type]


def used(state: OrgQuotaState, count: int, at: datetime, user: str = "u1") -> OrgQuotaState:
    for _ in range(count):
        decision, state = consume(state, user, at)
        assert decision.allowed, decision
    return state


# --- plans and allotments --------------------------------------------------------------------------


def test_org_on_a_plan_may_run_reports_until_the_monthly_allotment_is_used() -> None:
    state = used(basic_plan(), 99, MARCH_10)

    last = decide(state, "u1", MARCH_10)
    assert last.allowed
    assert last.org_remaining == 0

    _, state = consume(state, "u1", MARCH_10)
    refused = decide(state, "u1", MARCH_10)
    assert not refused.allowed
    assert refused.reason is QuotaDenialReason.ORG_LIMIT_REACHED
    assert refused.org_remaining == 0


def test_allowed_decision_reports_remaining_after_this_report() -> None:
    state = used(basic_plan(per_user_monthly_limit=10), 3, MARCH_10)

    decision = decide(state, "u1", MARCH_10)

    assert decision.org_used == 3
    assert decision.org_allotment == 100
    assert decision.org_remaining == 96
    assert decision.user_remaining == 6


def test_user_remaining_is_none_without_a_per_user_limit() -> None:
    assert decide(basic_plan(), "u1", MARCH_10).user_remaining is None


def test_org_without_plan_or_trial_is_refused_with_no_plan() -> None:
    decision = decide(OrgQuotaState(plan_monthly_reports=None), "u1", MARCH_10)

    assert decision.reason is QuotaDenialReason.NO_PLAN


@pytest.mark.parametrize("count", [0, 1, 99, 100, 101, 130])
def test_decide_on_a_count_given_apart_is_decide_on_the_state_holding_that_count(count: int) -> None:
    state = basic_plan(usage=MonthlyUsage(month=MARCH, org_used=7, top_ups=20))
    holding = replace(state, usage=MonthlyUsage(month=MARCH, org_used=count, top_ups=20))

    assert decide_on_count(state, "u1", MARCH_10, count) == decide(holding, "u1", MARCH_10)
    assert decide_on_count(state, "u1", MARCH_10, count).allowed is (count < 120)


def test_decide_on_a_count_after_the_month_turned_sees_the_new_month_without_last_months_top_ups() -> None:
    state = basic_plan(usage=MonthlyUsage(month=MARCH, org_used=7, top_ups=20))
    april_1 = MARCH.end

    decision = decide_on_count(state, "u1", april_1, 3)

    assert decision == decide(replace(state, usage=MonthlyUsage(month=calendar_month(april_1), org_used=3)),
                              "u1", april_1)
    assert decision.org_allotment == 100


def test_new_calendar_month_starts_from_zero_without_any_reset_job() -> None:
    state = used(basic_plan(), 100, datetime(2025, 3, 31, 23, 59, 59, tzinfo=UTC))
    assert decide(state, "u1", datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=UTC)).reason is (
        QuotaDenialReason.ORG_LIMIT_REACHED
    )

    first_second_of_april = datetime(2025, 4, 1, 0, 0, 1, tzinfo=UTC)
    decision = decide(state, "u1", first_second_of_april)

    assert decision.allowed
    assert decision.org_used == 0
    assert decision.month == calendar_month(first_second_of_april)


def test_month_boundary_follows_the_orgs_time_zone() -> None:
    # 2025-03-31 22:30 UTC is already April 1st 00:30 in Berlin (CEST, UTC+2)
    state = used(basic_plan(timezone="Europe/Berlin"), 100, datetime(2025, 3, 31, 12, 0, tzinfo=UTC))

    assert decide(state, "u1", datetime(2025, 3, 31, 21, 59, tzinfo=UTC)).reason is (
        QuotaDenialReason.ORG_LIMIT_REACHED
    )
    assert decide(state, "u1", datetime(2025, 3, 31, 22, 30, tzinfo=UTC)).allowed


def test_upgrade_mid_month_keeps_used_and_raises_the_allotment_at_once() -> None:
    state = used(basic_plan(), 90, MARCH_10)

    upgraded = state.with_plan(500)
    decision = decide(upgraded, "u1", MARCH_10)

    assert decision.allowed
    assert decision.org_used == 90
    assert decision.org_remaining == 409


def test_downgrade_mid_month_below_used_refuses_until_next_month() -> None:
    state = used(basic_plan(), 90, MARCH_10).with_plan(20)

    assert decide(state, "u1", MARCH_10).reason is QuotaDenialReason.ORG_LIMIT_REACHED
    assert decide(state, "u1", MARCH_10).org_remaining == 0
    assert decide(state, "u1", datetime(2025, 4, 1, tzinfo=UTC)).allowed


def test_top_up_adds_reports_to_the_current_month_only() -> None:
    state = used(basic_plan(), 100, MARCH_10).with_top_up(5, MARCH_10)

    state = used(state, 5, MARCH_10)
    assert decide(state, "u1", MARCH_10).reason is QuotaDenialReason.ORG_LIMIT_REACHED

    april_state = state.with_top_up(3, datetime(2025, 4, 2, tzinfo=UTC))
    april = decide(april_state, "u1", datetime(2025, 4, 2, tzinfo=UTC))
    assert april.org_allotment == 103


def test_top_ups_expire_with_the_month() -> None:
    state = basic_plan().with_top_up(50, MARCH_10)

    assert decide(state, "u1", MARCH_10).org_allotment == 150
    assert decide(state, "u1", datetime(2025, 4, 1, tzinfo=UTC)).org_allotment == 100


def test_effective_allotment_is_plan_plus_top_ups() -> None:
    assert effective_allotment(100, 25) == 125
    assert remaining(100, 120) == 0
    with pytest.raises(InvalidValueError):
        effective_allotment(-1, 0)


def test_top_up_of_zero_reports_is_refused() -> None:
    with pytest.raises(InvalidValueError):
        basic_plan().with_top_up(0, MARCH_10)


# --- per-user limits ---------------------------------------------------------------------------------


def test_user_at_their_monthly_limit_is_refused_while_colleagues_may_continue() -> None:
    state = used(basic_plan(per_user_monthly_limit=3), 3, MARCH_10, user="alice")

    refused = decide(state, "alice", MARCH_10)
    assert refused.reason is QuotaDenialReason.USER_LIMIT_REACHED
    assert refused.user_remaining == 0
    assert decide(state, "bob", MARCH_10).allowed


def test_org_limit_is_named_before_the_user_limit_when_both_are_reached() -> None:
    state = used(OrgQuotaState(plan_monthly_reports=3, per_user_monthly_limit=3), 3, MARCH_10)

    assert decide(state, "u1", MARCH_10).reason is QuotaDenialReason.ORG_LIMIT_REACHED


def test_lowering_the_per_user_limit_below_use_refuses_that_user() -> None:
    state = used(basic_plan(), 10, MARCH_10, user="alice")

    assert decide(replace(state, per_user_monthly_limit=5), "alice", MARCH_10).reason is (
        QuotaDenialReason.USER_LIMIT_REACHED
    )


def test_monthly_usage_accepts_only_the_requesting_users_count() -> None:
    state = basic_plan(
        per_user_monthly_limit=50,
        usage=MonthlyUsage(month=MARCH, org_used=70, user_used={"alice": 50}),
    )

    assert decide(state, "alice", MARCH_10).reason is QuotaDenialReason.USER_LIMIT_REACHED
    assert decide(state, "bob", MARCH_10).user_remaining == 49


# --- trial -------------------------------------------------------------------------------------------


TRIAL_START = datetime(2025, 3, 25, 9, 0, tzinfo=UTC)


def trial_org() -> OrgQuotaState:
    return OrgQuotaState(plan_monthly_reports=None, trial_started_at=TRIAL_START)


def test_trial_allows_ten_reports_then_refuses_as_exhausted() -> None:
    state = used(trial_org(), 10, TRIAL_START + timedelta(days=2))

    refused = decide(state, "u1", TRIAL_START + timedelta(days=3))
    assert refused.reason is QuotaDenialReason.TRIAL_EXHAUSTED
    assert refused.org_allotment == 10


def test_trial_counts_across_a_month_boundary() -> None:
    state = used(trial_org(), 6, TRIAL_START + timedelta(days=1))  # March
    state = used(state, 4, datetime(2025, 4, 2, tzinfo=UTC))  # April

    assert decide(state, "u1", datetime(2025, 4, 3, tzinfo=UTC)).reason is (QuotaDenialReason.TRIAL_EXHAUSTED)


def test_trial_refuses_after_fourteen_days_even_with_reports_left() -> None:
    state = used(trial_org(), 2, TRIAL_START)

    last_moment = TRIAL_START + timedelta(days=14) - timedelta(microseconds=1)
    assert decide(state, "u1", last_moment).allowed
    assert decide(state, "u1", TRIAL_START + timedelta(days=14)).reason is (QuotaDenialReason.TRIAL_EXPIRED)


def test_top_up_does_not_extend_a_trial() -> None:
    state = used(trial_org(), 10, TRIAL_START).with_top_up(20, TRIAL_START)

    assert decide(state, "u1", TRIAL_START).reason is QuotaDenialReason.TRIAL_EXHAUSTED


def test_setting_a_plan_ends_the_trial_and_the_months_trial_reports_count() -> None:
    state = used(trial_org(), 10, TRIAL_START + timedelta(days=1))

    on_lite = state.with_plan(20)
    decision = decide(on_lite, "u1", TRIAL_START + timedelta(days=2))

    assert decision.allowed
    assert decision.org_used == 10
    assert decision.org_remaining == 9


def test_trial_allowance_is_configurable() -> None:
    state = replace(trial_org(), trial=TrialAllowance(reports=2, days=1))
    state = used(state, 2, TRIAL_START)

    assert decide(state, "u1", TRIAL_START).reason is QuotaDenialReason.TRIAL_EXHAUSTED
    assert decide(state, "u1", TRIAL_START + timedelta(days=1)).reason is QuotaDenialReason.TRIAL_EXPIRED


# --- alerts ------------------------------------------------------------------------------------------


def test_eightieth_report_of_a_hundred_crosses_eighty_percent_only() -> None:
    assert crossed_thresholds(79, 80, 100) == (80,)
    assert crossed_thresholds(80, 81, 100) == ()
    assert crossed_thresholds(99, 100, 100) == (100,)


def test_threshold_on_a_fractional_report_is_crossed_by_the_next_whole_report() -> None:
    # 80 % of 20 is 16; 80 % of 15 is 12; 80 % of 13 is 10.4 -> crossed by the 11th report
    assert crossed_thresholds(10, 11, 13) == (80,)
    assert crossed_thresholds(9, 10, 13) == ()


def test_one_jump_can_cross_several_thresholds() -> None:
    assert crossed_thresholds(0, 20, 20, thresholds_percent=(50, 80, 100)) == (50, 80, 100)


def test_zero_allotment_crosses_nothing() -> None:
    assert crossed_thresholds(0, 1, 0) == ()


@given(
    allotment=st.integers(min_value=1, max_value=2_000),
    thresholds=st.lists(st.integers(min_value=1, max_value=150), min_size=1, max_size=4, unique=True),
)
def test_counting_one_report_at_a_time_crosses_each_reachable_threshold_exactly_once(
    allotment: int, thresholds: list[int]
) -> None:
    fired: list[int] = []
    for count in range(allotment + allotment // 2 + 1):
        fired.extend(crossed_thresholds(count, count + 1, allotment, tuple(thresholds)))

    top = allotment + allotment // 2 + 1
    reachable = sorted(t for t in thresholds if t * allotment <= top * 100)
    assert fired == reachable


# --- forecast ----------------------------------------------------------------------------------------


def test_half_the_allotment_used_in_the_first_third_of_the_month_is_on_track() -> None:
    april = calendar_month(datetime(2025, 4, 15, tzinfo=UTC))  # 30 days
    at = april.start + timedelta(days=10)

    forecast = forecast_limit(used=50, allotment=100, month=april, at=at)

    assert forecast.on_track_to_hit_limit
    assert forecast.projected_exhaustion_at == april.start + timedelta(days=20)


def test_use_below_the_pace_of_the_month_is_not_on_track() -> None:
    april = calendar_month(datetime(2025, 4, 15, tzinfo=UTC))

    forecast = forecast_limit(used=40, allotment=100, month=april, at=april.start + timedelta(days=15))

    assert not forecast.on_track_to_hit_limit
    assert forecast.projected_exhaustion_at == april.start + timedelta(days=37, hours=12)


def test_projection_reaching_the_limit_exactly_at_month_end_counts_as_on_track() -> None:
    april = calendar_month(datetime(2025, 4, 15, tzinfo=UTC))

    forecast = forecast_limit(used=50, allotment=100, month=april, at=april.start + timedelta(days=15))

    assert forecast.on_track_to_hit_limit
    assert forecast.projected_exhaustion_at == april.end


def test_forecast_waits_for_a_minimum_of_use() -> None:
    april = calendar_month(datetime(2025, 4, 15, tzinfo=UTC))
    one_hour_in = april.start + timedelta(hours=1)

    # 4 reports in the first hour would exhaust 1000 long before month end, but 4 < 5 reports
    assert not forecast_limit(4, 1000, april, one_hour_in).on_track_to_hit_limit
    # 50 reports are >= 5 but below 10 % of 1000
    assert not forecast_limit(50, 1000, april, one_hour_in).on_track_to_hit_limit
    assert forecast_limit(100, 1000, april, one_hour_in).on_track_to_hit_limit
    lenient = ForecastRule(min_share_percent=5)
    assert forecast_limit(50, 1000, april, one_hour_in, lenient).on_track_to_hit_limit


def test_org_that_already_hit_its_limit_is_not_on_track_but_reached() -> None:
    april = calendar_month(datetime(2025, 4, 15, tzinfo=UTC))

    assert not forecast_limit(100, 100, april, april.start + timedelta(days=3)).on_track_to_hit_limit


def test_forecast_without_use_projects_nothing() -> None:
    forecast = forecast_limit(0, 100, MARCH, MARCH_10)

    assert forecast == forecast.__class__(on_track_to_hit_limit=False, projected_exhaustion_at=None)


def test_forecast_outside_the_month_is_refused() -> None:
    with pytest.raises(InvalidValueError):
        forecast_limit(10, 100, MARCH, datetime(2025, 4, 1, tzinfo=UTC))


@given(
    allotment=st.integers(min_value=1, max_value=5_000),
    used_count=st.integers(min_value=1, max_value=5_000),
    elapsed_seconds=st.integers(min_value=1, max_value=30 * 86_400 - 1),
)
def test_on_track_exactly_when_the_projected_exhaustion_is_within_the_month(
    allotment: int, used_count: int, elapsed_seconds: int
) -> None:
    april = calendar_month(datetime(2025, 4, 15, tzinfo=UTC))
    at = april.start + timedelta(seconds=elapsed_seconds)
    rule = ForecastRule(min_share_percent=0, min_reports=0)

    forecast = forecast_limit(used_count, allotment, april, at, rule)

    assert forecast.projected_exhaustion_at is not None
    within_month = forecast.projected_exhaustion_at <= april.end
    assert forecast.on_track_to_hit_limit == (within_month and used_count < allotment)


def test_a_huge_allotment_against_a_handful_of_uses_projects_no_exhaustion_instead_of_overflowing() -> None:
    april = calendar_month(datetime(2025, 4, 15, tzinfo=UTC))
    late_in_april = april.end - timedelta(seconds=1)

    forecast = forecast_limit(used=3, allotment=10**15, month=april, at=late_in_april)

    assert forecast == forecast.__class__(on_track_to_hit_limit=False, projected_exhaustion_at=None)


@given(
    allotment=st.integers(min_value=1, max_value=10**18),
    used_count=st.integers(min_value=1, max_value=10**6),
    elapsed_seconds=st.integers(min_value=0, max_value=30 * 86_400 - 1),
)
def test_the_forecast_never_overflows_and_projects_no_earlier_than_the_exact_rate(
    allotment: int, used_count: int, elapsed_seconds: int
) -> None:
    april = calendar_month(datetime(2025, 4, 15, tzinfo=UTC))
    at = april.start + timedelta(seconds=elapsed_seconds)

    forecast = forecast_limit(used_count, allotment, april, at, ForecastRule(min_share_percent=0, min_reports=0))

    exact_offset_us = Fraction(elapsed_seconds * 1_000_000 * allotment, used_count)
    representable_us = (datetime.max.replace(tzinfo=UTC) - april.start) // timedelta(microseconds=1)
    if forecast.projected_exhaustion_at is None:
        assert exact_offset_us > representable_us
        assert not forecast.on_track_to_hit_limit
    else:
        offset_us = (forecast.projected_exhaustion_at - april.start) // timedelta(microseconds=1)
        assert exact_offset_us <= offset_us < exact_offset_us + 1


# --- properties: never beyond the limits ---------------------------------------------------------------


Step = tuple[str, int, int]  # (action, user index or amount, hours to advance)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("use"), st.integers(0, 4), st.integers(0, 30)),
        st.tuples(st.just("top_up"), st.integers(1, 20), st.integers(0, 30)),
        st.tuples(st.just("plan"), st.sampled_from([0, 1, 3, 20, 100]), st.integers(0, 30)),
        st.tuples(st.just("user_limit"), st.integers(0, 30), st.integers(0, 30)),
    ),
    max_size=300,
)


@settings(max_examples=150)
@given(steps=steps, plan=st.sampled_from([1, 5, 20, 100]))
def test_no_sequence_of_requests_runs_beyond_allotment_plus_top_ups(steps: list[Step], plan: int) -> None:
    state = OrgQuotaState(plan_monthly_reports=plan, timezone="America/New_York")
    at = datetime(2025, 10, 25, tzinfo=UTC)
    for action, value, hours in steps:
        at += timedelta(hours=hours)
        month = calendar_month(at, "America/New_York")
        if action == "use":
            before = state.month_usage(at)
            decision, state = consume(state, f"user-{value}", at)
            after = state.month_usage(at)
            allotment = effective_allotment(state.plan_monthly_reports or 0, before.top_ups)
            if decision.allowed:
                assert after.org_used == before.org_used + 1 <= allotment
            else:
                assert after == before
            assert decision.month == month
        elif action == "top_up":
            state = state.with_top_up(value, at)
        elif action == "plan":
            state = state.with_plan(value)
        else:
            state = replace(state, per_user_monthly_limit=value)


@settings(max_examples=150)
@given(steps=steps, limit=st.integers(0, 10))
def test_no_user_runs_beyond_the_per_user_limit(steps: list[Step], limit: int) -> None:
    state = OrgQuotaState(plan_monthly_reports=1000, per_user_monthly_limit=limit)
    at = datetime(2025, 1, 30, tzinfo=UTC)
    for action, value, hours in steps:
        at += timedelta(hours=hours)
        if action != "use":
            continue
        user = f"user-{value}"
        decision, state = consume(state, user, at)
        assert state.month_usage(at).used_by(user) <= limit
        if not decision.allowed:
            assert decision.reason is QuotaDenialReason.USER_LIMIT_REACHED


@settings(max_examples=100)
@given(hours=st.lists(st.integers(0, 48), max_size=60))
def test_no_trial_runs_more_than_its_allowance_or_after_its_window(hours: list[int]) -> None:
    state = trial_org()
    at = TRIAL_START
    window = Period(TRIAL_START, TRIAL_START + timedelta(days=14))
    allowed = 0
    for step in hours:
        at += timedelta(hours=step)
        decision, state = consume(state, "u1", at)
        if decision.allowed:
            allowed += 1
            assert window.contains(at)
    assert allowed <= 10
