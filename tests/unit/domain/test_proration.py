from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.calendar import BillingAnchor, Interval, Period, period_containing
from shared.domain.errors import ProrationError
from shared.domain.invoice import LineKind
from shared.domain.money import Money
from shared.domain.proration import prorate_plan_change, prorate_seat_change, proration_lines

pytestmark = pytest.mark.unit

CATALOG = load_default_catalog()
JANUARY = Period(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
HALFWAY = datetime(2024, 1, 16, 12, tzinfo=UTC)


def test_upgrade_from_10_to_20_usd_halfway_charges_5_usd_like_stripe():
    lines = prorate_plan_change(
        old_plan=CATALOG.plan("basic_monthly"),
        new_plan=CATALOG.plan("premium_monthly"),
        old_seats=1,
        new_seats=1,
        period=JANUARY,
        at=HALFWAY,
    )
    assert [line.amount for line in lines] == [Money(-500, "USD"), Money(1000, "USD")]
    assert sum(line.amount.amount_minor for line in lines) == 500
    assert all(line.kind is LineKind.PRORATION and line.proration for line in lines)
    assert all(line.period == Period(HALFWAY, JANUARY.end) for line in lines)


def test_adding_seats_halfway_prorates_the_same_way():
    lines = prorate_seat_change(plan=CATALOG.plan("team"), old_seats=2, new_seats=4, period=JANUARY, at=HALFWAY)
    assert [line.amount for line in lines] == [Money(-2000, "USD"), Money(4000, "USD")]


def test_moving_up_from_a_free_plan_has_no_zero_credit_line():
    lines = prorate_plan_change(
        old_plan=CATALOG.plan("free"),
        new_plan=CATALOG.plan("pro"),
        old_seats=1,
        new_seats=1,
        period=JANUARY,
        at=HALFWAY,
    )
    assert [line.amount for line in lines] == [Money(450, "USD")]


def test_proration_outside_the_period_is_refused():
    with pytest.raises(ProrationError):
        proration_lines(
            old_fee=Money(1000, "USD"),
            new_fee=Money(2000, "USD"),
            period=JANUARY,
            at=JANUARY.end,
            old_description="old",
            new_description="new",
        )


def test_proration_is_to_the_second():
    one_second_before_end = JANUARY.end - timedelta(seconds=1)
    lines = proration_lines(
        old_fee=Money(2_678_400, "USD"),  # one cent per second of January
        new_fee=Money(0, "USD"),
        period=JANUARY,
        at=one_second_before_end,
        old_description="old",
        new_description="new",
    )
    assert [line.amount for line in lines] == [Money(-1, "USD")]


CURRENCY_FEES = st.sampled_from(["JPY", "USD", "BHD"]).flatmap(
    lambda currency: st.tuples(
        st.just(currency),
        st.integers(min_value=0, max_value=10**9),
        st.integers(min_value=0, max_value=10**9),
    )
)


def _instant_in(period: Period, offset: Fraction) -> datetime:
    seconds = int(period.duration_seconds() * offset)
    return period.start + timedelta(seconds=min(seconds, period.duration_seconds() - 1))


@settings(max_examples=300, deadline=None)
@given(
    fees=CURRENCY_FEES,
    anchor_day=st.integers(min_value=1, max_value=31),
    interval=st.sampled_from(list(Interval)),
    tz=st.sampled_from(["UTC", "America/New_York", "Europe/Berlin"]),
    when=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)),
    offset=st.fractions(min_value=0, max_value=1),
)
def test_any_change_at_any_instant_is_the_price_difference_times_the_remaining_fraction(
    fees, anchor_day, interval, tz, when, offset
):
    currency, old_minor, new_minor = fees
    period = period_containing(BillingAnchor(day=anchor_day, tz=tz), interval, when)
    at = _instant_in(period, offset)
    old_fee, new_fee = Money(old_minor, currency), Money(new_minor, currency)
    lines = proration_lines(
        old_fee=old_fee, new_fee=new_fee, period=period, at=at, old_description="old", new_description="new"
    )
    remaining = Fraction(int((period.end - at).total_seconds()), period.duration_seconds())
    credit = sum((line.amount.amount_minor for line in lines if line.amount.is_negative()), 0)
    charge = sum((line.amount.amount_minor for line in lines if line.amount.is_positive()), 0)
    # each line within one minor unit (in fact half a unit) of its exact value
    assert abs(credit - (-old_minor * remaining)) <= 1
    assert abs(charge - new_minor * remaining) <= 1
    # the net is the difference times the remaining fraction within one minor unit per line (two lines,
    # a zero one being left out, each rounded by at most half a unit)
    assert abs((credit + charge) - (new_minor - old_minor) * remaining) <= 1


@settings(max_examples=200, deadline=None)
@given(
    fees=CURRENCY_FEES,
    when=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)),
    offset=st.fractions(min_value=0, max_value=1),
)
def test_a_change_to_the_same_price_nets_to_exactly_zero(fees, when, offset):
    currency, fee_minor, _ = fees
    period = period_containing(BillingAnchor(day=31), Interval.MONTH, when)
    lines = proration_lines(
        old_fee=Money(fee_minor, currency),
        new_fee=Money(fee_minor, currency),
        period=period,
        at=_instant_in(period, offset),
        old_description="old",
        new_description="new",
    )
    assert sum(line.amount.amount_minor for line in lines) == 0
