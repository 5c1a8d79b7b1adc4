"""A batch of report requests decided in arrival order, and the alerts the state it leaves calls for."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.calendar import calendar_month
from shared.domain.quota import (
    MonthlyUsage,
    OrgQuotaState,
    QuotaAlertKind,
    QuotaDenialReason,
    TrialAllowance,
    alerts_due,
    consume,
    decide_in_order,
)

pytestmark = pytest.mark.unit

MARCH_10 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
MARCH = calendar_month(MARCH_10)


def one_by_one(state: OrgQuotaState, users: list[str], at: datetime) -> tuple[list[object], OrgQuotaState]:
    decisions = []
    for user in users:
        decision, state = consume(state, user, at)
        decisions.append(decision)
    return decisions, state


@given(plan=st.one_of(st.none(), st.integers(0, 12)), user_limit=st.one_of(st.none(), st.integers(0, 4)),
       top_ups=st.integers(0, 3), used=st.integers(0, 10), trial_used=st.integers(0, 12),
       users=st.lists(st.sampled_from(["ann", "bob", "cy"]), max_size=25))
def test_a_batch_decides_like_consume_one_request_after_the_other(
        plan: int | None, user_limit: int | None, top_ups: int, used: int, trial_used: int,
        users: list[str]) -> None:
    state = OrgQuotaState(plan_monthly_reports=plan, per_user_monthly_limit=user_limit,
                          trial_started_at=MARCH_10 - timedelta(days=2), trial_used=trial_used,
                          usage=MonthlyUsage(MARCH, org_used=used, user_used={"ann": 1}, top_ups=top_ups))
    batch = decide_in_order(state, users, MARCH_10)
    expected, after = one_by_one(state, users, MARCH_10)
    assert list(batch.decisions) == expected
    assert batch.admitted == sum(1 for d in batch.decisions if d.allowed)
    assert batch.state.trial_used == after.trial_used
    assert batch.state.month_usage(MARCH_10).org_used == after.month_usage(MARCH_10).org_used
    for user in users:
        assert batch.state.month_usage(MARCH_10).used_by(user) == after.month_usage(MARCH_10).used_by(user)


def test_the_last_report_of_the_month_goes_to_the_first_request_of_the_batch() -> None:
    state = OrgQuotaState(plan_monthly_reports=2, usage=MonthlyUsage(MARCH, org_used=1))
    batch = decide_in_order(state, ["ann", "bob"], MARCH_10)
    assert [d.allowed for d in batch.decisions] == [True, False]
    assert batch.decisions[1].reason is QuotaDenialReason.ORG_LIMIT_REACHED


def test_an_org_at_80_percent_is_alerted_at_80_and_nothing_else() -> None:
    state = OrgQuotaState(plan_monthly_reports=10, usage=MonthlyUsage(MARCH, org_used=8))
    due = alerts_due(state, MARCH_10.replace(day=28), ["ann"])
    assert [(a.kind, a.threshold_percent, a.reason) for a in due] == [
        (QuotaAlertKind.THRESHOLD_REACHED, 80, "80% of the monthly allotment used")]
    assert due[0].period_start == MARCH.start


def test_an_org_at_its_limit_is_alerted_for_every_threshold_and_the_limit() -> None:
    state = OrgQuotaState(plan_monthly_reports=10, usage=MonthlyUsage(MARCH, org_used=10))
    kinds = [(a.kind, a.threshold_percent) for a in alerts_due(state, MARCH_10.replace(day=28), [], (50,))]
    assert kinds == [(QuotaAlertKind.THRESHOLD_REACHED, 50), (QuotaAlertKind.LIMIT_REACHED, 0)]


def test_an_org_using_its_reports_fast_is_on_track_to_exceed() -> None:
    state = OrgQuotaState(plan_monthly_reports=100, usage=MonthlyUsage(MARCH, org_used=40))
    kinds = [a.kind for a in alerts_due(state, MARCH_10, [])]
    assert kinds == [QuotaAlertKind.ON_TRACK_TO_EXCEED]


def test_a_trial_used_up_is_alerted_once_keyed_by_the_trial_start() -> None:
    start = MARCH_10 - timedelta(days=1)
    state = OrgQuotaState(plan_monthly_reports=None, trial_started_at=start, trial_used=3,
                          trial=TrialAllowance(3, 14))
    due = alerts_due(state, MARCH_10, [])
    assert [(a.kind, a.period_start, a.reason) for a in due] == [
        (QuotaAlertKind.LIMIT_REACHED, start, QuotaDenialReason.TRIAL_EXHAUSTED.value)]


def test_only_the_users_at_their_limit_are_alerted_in_name_order() -> None:
    state = replace(OrgQuotaState(plan_monthly_reports=100, per_user_monthly_limit=2),
                    usage=MonthlyUsage(MARCH, org_used=5, user_used={"cy": 2, "ann": 2, "bob": 1}))
    due = alerts_due(state, MARCH_10.replace(day=28), ["cy", "bob", "ann"])
    assert [(a.user_id, a.used, a.allotment) for a in due] == [("ann", 2, 2), ("cy", 2, 2)]


@given(count=st.integers(0, 130), day=st.integers(1, 31), top_ups=st.integers(0, 30))
def test_alerts_on_a_count_given_apart_are_the_alerts_of_the_state_holding_that_count(
        count: int, day: int, top_ups: int) -> None:
    granted = OrgQuotaState(plan_monthly_reports=100, usage=MonthlyUsage(MARCH, org_used=3, top_ups=top_ups))
    holding = replace(granted, usage=MonthlyUsage(MARCH, org_used=count, top_ups=top_ups))
    at = MARCH_10.replace(day=day)

    assert alerts_due(granted, at, [], (50, 90), org_used=count) == alerts_due(holding, at, [], (50, 90))
