"""Included credits after an upgrade or a seat increase, for a trial, and the explicit timing of a plan change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.calendar import Period
from shared.domain.catalog import ChangeTiming, MeterId
from shared.domain.errors import SubscriptionError
from shared.domain.events import PlanChanged, PlanChangeScheduled
from shared.domain.ids import CustomerId, SubscriptionId
from shared.domain.included_credits import change_grants, included_grants, prorate_units, trial_grants
from shared.domain.invoice import LineKind
from shared.domain.ledger import CreditLedger, GrantSource, MeterCredit
from shared.domain.money import Money
from shared.domain.rating import trial_credit_grants
from shared.domain.subscription import ChangeKind, Subscription, SubscriptionStatus

pytestmark = pytest.mark.unit

CATALOG = load_default_catalog()
APR_1 = datetime(2024, 4, 1, tzinfo=UTC)
MAY_1 = datetime(2024, 5, 1, tzinfo=UTC)
APRIL = Period(APR_1, MAY_1)  # 30 days
INFERENCE, STORAGE = MeterId("inference"), MeterId("storage")


def usd(major: str) -> Money:
    return Money.of(major, "USD")


def subscribe(plan_id: str, *, seats: int = 1, trial_days: int = 0, at: datetime = APR_1) -> Subscription:
    return Subscription.start(
        subscription_id=SubscriptionId("sub_1"),
        customer_id=CustomerId("org_1"),
        plan=CATALOG.plan(plan_id),
        at=at,
        seats=seats,
        trial_days=trial_days,
    )


def amounts(grants: tuple[object, ...]) -> dict[str, object]:
    return {grant.meter_id: grant.amount for grant in grants}  # type: ignore[attr-defined]


# --- upgrades: the prorated difference of the included credit ----------------------------------------


def test_upgrade_grants_the_prorated_increase_of_included_credits_for_the_rest_of_the_period():
    """Worked example: Pro (USD 2, 1,000 GB-months) -> Team x 3 seats (USD 6, 3,000 GB-months) ten days into
    a 30-day April: two thirds remain, USD 4 x 2/3 = 2.666.. -> USD 2.67, 2,000 x 2/3 = 1,333.3.. -> 1,333."""
    at = APR_1 + timedelta(days=10)
    outcome = change_grants(
        subscription_id="sub_1",
        old_plan=CATALOG.plan("pro"),
        old_seats=1,
        new_plan=CATALOG.plan("team"),
        new_seats=3,
        period=APRIL,
        at=at,
    )
    assert amounts(outcome) == {INFERENCE: usd("2.67"), STORAGE: Decimal(1333)}
    assert {(g.effective_at, g.expires_at, g.source) for g in outcome} == {(at, MAY_1, "plan_included")}


def test_upgrade_through_the_subscription_returns_proration_lines_and_credit_grants():
    subscription = subscribe("pro")
    at = APR_1 + timedelta(days=15)  # exactly half of April remains
    outcome = subscription.change_plan(
        new_plan=CATALOG.plan("enterprise"), current_plan=CATALOG.plan("pro"), at=at
    )
    assert outcome.kind is ChangeKind.UPGRADE and outcome.timing is ChangeTiming.IMMEDIATE
    assert {line.kind for line in outcome.lines} == {LineKind.PRORATION}
    # Enterprise includes USD 2 and 1,000 GB-months per seat, like Pro's single seat: nothing to add.
    assert outcome.grants == ()


def test_seat_increase_grants_the_per_seat_credits_for_the_rest_of_the_period():
    subscription = subscribe("team", seats=2)
    outcome = subscription.change_seats(seats=5, plan=CATALOG.plan("team"), at=APR_1 + timedelta(days=15))
    # 3 more seats x USD 2 x 1/2 = USD 3; 3 x 1,000 x 1/2 = 1,500 GB-months.
    assert amounts(outcome.grants) == {INFERENCE: usd("3.00"), STORAGE: Decimal(1500)}


def test_upgrade_from_the_free_tier_grants_only_the_difference_of_the_included_credits():
    grants = change_grants(
        subscription_id="sub_1",
        old_plan=CATALOG.plan("free"),
        old_seats=1,
        new_plan=CATALOG.plan("pro"),
        new_seats=1,
        period=APRIL,
        at=APR_1 + timedelta(days=15),
    )
    # (USD 2.00 - 0.10) / 2 = 0.95; (1,000 - 100) / 2 = 450.
    assert amounts(grants) == {INFERENCE: usd("0.95"), STORAGE: Decimal(450)}


def test_an_immediate_downgrade_takes_no_included_credit_back():
    grants = change_grants(
        subscription_id="sub_1",
        old_plan=CATALOG.plan("team"),
        old_seats=4,
        new_plan=CATALOG.plan("pro"),
        new_seats=1,
        period=APRIL,
        at=APR_1 + timedelta(days=3),
    )
    assert grants == ()


def test_a_change_at_the_very_start_of_the_period_grants_the_full_difference_under_its_own_key():
    grants = change_grants(
        subscription_id="sub_1",
        old_plan=CATALOG.plan("team"),
        old_seats=1,
        new_plan=CATALOG.plan("team"),
        new_seats=2,
        period=APRIL,
        at=APR_1,
    )
    period_grants = included_grants("sub_1", CATALOG.plan("team"), 1, APRIL)
    assert amounts(grants) == {INFERENCE: usd("2.00"), STORAGE: Decimal(1000)}
    assert {g.key for g in grants}.isdisjoint({g.key for g in period_grants})


def test_upgrade_grants_can_be_written_to_the_ledger_next_to_the_period_grants():
    ledger = CreditLedger.open("sub_1", [MeterCredit("inference", "USD"), MeterCredit("storage")])
    at = APR_1 + timedelta(days=10)
    upgrade = change_grants(
        subscription_id="sub_1",
        old_plan=CATALOG.plan("pro"),
        old_seats=1,
        new_plan=CATALOG.plan("team"),
        new_seats=3,
        period=APRIL,
        at=at,
    )
    for grant in (*included_grants("sub_1", CATALOG.plan("pro"), 1, APRIL), *upgrade):
        ledger.grant(
            grant_id=grant.key,
            meter=grant.meter_id,
            amount=grant.amount,
            source=GrantSource(grant.source),
            effective_at=grant.effective_at,
            expires_at=grant.expires_at,
        )
    assert ledger.balance("inference", at) == usd("4.67")
    assert ledger.balance("storage", at) == Decimal(2333)


@given(
    elapsed_seconds=st.integers(min_value=0, max_value=30 * 86_400 - 1),
    old_seats=st.integers(min_value=1, max_value=50),
    extra_seats=st.integers(min_value=0, max_value=50),
)
def test_change_grants_equal_the_increase_times_the_remaining_fraction_rounded_once(
    elapsed_seconds: int, old_seats: int, extra_seats: int
):
    at = APR_1 + timedelta(seconds=elapsed_seconds)
    new_seats = old_seats + extra_seats
    grants = change_grants(
        subscription_id="sub_1",
        old_plan=CATALOG.plan("team"),
        old_seats=old_seats,
        new_plan=CATALOG.plan("team"),
        new_seats=new_seats,
        period=APRIL,
        at=at,
    )
    fraction = APRIL.remaining_fraction(at)
    exact_money = Fraction(200 * extra_seats) * fraction  # USD 2 per seat, in cents
    exact_units = Fraction(1000 * extra_seats) * fraction
    got = amounts(grants)
    money = got.get(INFERENCE, usd("0"))
    units = got.get(STORAGE, Decimal(0))
    assert isinstance(money, Money) and isinstance(units, Decimal)
    assert abs(money.amount_minor - exact_money) <= Fraction(1, 2)
    assert abs(Fraction(units) - exact_units) <= Fraction(1, 2)
    assert all(grant.expires_at == APRIL.end and grant.effective_at == at for grant in grants)


def test_units_are_prorated_to_the_precision_the_catalog_writes_them_in():
    assert prorate_units(Decimal(1000), Fraction(2, 3)) == Decimal(667)
    assert prorate_units(Decimal("2.5"), Fraction(1, 3)) == Decimal("0.8")
    assert prorate_units(Decimal("0.05"), Fraction(1, 2)) == Decimal("0.03")  # half away from zero


# --- trials ------------------------------------------------------------------------------------------


def test_a_trial_gets_the_plans_included_credits_for_the_whole_trial_window():
    subscription = subscribe("team", seats=3, trial_days=14)
    grants = trial_credit_grants(subscription=subscription, plan=CATALOG.plan("team"))
    assert amounts(grants) == {INFERENCE: usd("6.00"), STORAGE: Decimal(3000)}
    trial = subscription.current_period
    assert {(g.effective_at, g.expires_at, g.source) for g in grants} == {(trial.start, trial.end, "trial")}


def test_trial_credits_are_not_keyed_like_the_first_periods_credits():
    trial = Period(APR_1, APR_1 + timedelta(days=14))
    trial_keys = {g.key for g in trial_grants("sub_1", CATALOG.plan("pro"), 1, trial)}
    period_keys = {g.key for g in included_grants("sub_1", CATALOG.plan("pro"), 1, trial)}
    assert trial_keys.isdisjoint(period_keys)


def test_an_active_subscription_has_no_trial_credits():
    subscription = subscribe("pro")
    assert subscription.status is SubscriptionStatus.ACTIVE
    assert trial_credit_grants(subscription=subscription, plan=CATALOG.plan("pro")) == ()


def test_an_upgrade_during_a_trial_adds_the_difference_for_the_rest_of_the_trial():
    subscription = subscribe("team", seats=2, trial_days=14)
    outcome = subscription.change_seats(seats=4, plan=CATALOG.plan("team"), at=APR_1 + timedelta(days=7))
    assert amounts(outcome.grants) == {INFERENCE: usd("2.00"), STORAGE: Decimal(1000)}
    assert {g.expires_at for g in outcome.grants} == {subscription.current_period.end}


# --- explicit timing of a plan change ----------------------------------------------------------------


def test_explicit_period_end_timing_schedules_an_upgrade():
    subscription = subscribe("pro")
    outcome = subscription.change_plan(
        new_plan=CATALOG.plan("team"),
        current_plan=CATALOG.plan("pro"),
        at=APR_1 + timedelta(days=10),
        timing=ChangeTiming.PERIOD_END,
    )
    assert (outcome.kind, outcome.timing, outcome.effective_at) == (ChangeKind.UPGRADE, ChangeTiming.PERIOD_END, MAY_1)
    assert outcome.lines == () and outcome.grants == ()
    assert (subscription.plan_id, subscription.pending_plan_id) == ("pro", "team")
    assert isinstance(subscription.pending_events[-1], PlanChangeScheduled)


def test_explicit_immediate_timing_prorates_a_downgrade_the_catalog_would_defer():
    subscription = subscribe("team", seats=2)
    assert CATALOG.plan("team").change_timing is ChangeTiming.PERIOD_END
    outcome = subscription.change_plan(
        new_plan=CATALOG.plan("pro"),
        current_plan=CATALOG.plan("team"),
        at=APR_1 + timedelta(days=15),
        timing=ChangeTiming.IMMEDIATE,
    )
    assert (outcome.kind, outcome.timing) == (ChangeKind.DOWNGRADE, ChangeTiming.IMMEDIATE)
    # credit half of 2 x USD 20, charge half of USD 9
    assert [line.amount for line in outcome.lines] == [usd("-20.00"), usd("4.50")]
    assert subscription.plan_id == "pro" and subscription.pending_plan_id is None
    assert isinstance(subscription.pending_events[-1], PlanChanged)
    assert outcome.grants == ()


def test_without_timing_the_catalog_default_still_decides():
    subscription = subscribe("team", seats=2)
    outcome = subscription.change_plan(
        new_plan=CATALOG.plan("pro"), current_plan=CATALOG.plan("team"), at=APR_1 + timedelta(days=15)
    )
    assert outcome.timing is ChangeTiming.PERIOD_END


def test_an_interval_change_cannot_wait_for_the_period_end():
    subscription = subscribe("premium_monthly")
    with pytest.raises(SubscriptionError, match="interval"):
        subscription.change_plan(
            new_plan=CATALOG.plan("premium_yearly"),
            current_plan=CATALOG.plan("premium_monthly"),
            at=APR_1 + timedelta(days=3),
            timing=ChangeTiming.PERIOD_END,
        )


def test_a_trial_plan_change_cannot_be_scheduled_for_the_period_end():
    subscription = subscribe("team", seats=2, trial_days=14)
    with pytest.raises(SubscriptionError, match="trial"):
        subscription.change_plan(
            new_plan=CATALOG.plan("pro"),
            current_plan=CATALOG.plan("team"),
            at=APR_1 + timedelta(days=3),
            timing=ChangeTiming.PERIOD_END,
        )


def test_an_included_grant_is_written_under_one_grant_id_and_a_replay_writes_nothing_more():
    # the worker's unit of work and the edge's change preview both grant through `grant_into`: same ids,
    # so the credits are drawn in the same order on both sides
    ledger = CreditLedger.open("sub_1", [MeterCredit("inference", "USD"), MeterCredit("storage")])
    [grant, *_] = included_grants("sub_1", CATALOG.plan("pro"), 1, APRIL)
    entry = grant.grant_into(ledger)
    assert entry.grant_id == f"incl|{grant.key}" == "incl|sub_1|inference|2024-04-01T00:00:00+00:00"
    assert grant.grant_into(ledger) == entry
    assert [g.grant_id for g in ledger.grants("inference")] == [entry.grant_id]
    assert ledger.grants("inference")[0].source is GrantSource.PLAN_INCLUDED
