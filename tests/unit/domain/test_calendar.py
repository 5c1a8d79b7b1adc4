from __future__ import annotations

import calendar as stdlib_calendar
from datetime import UTC, datetime, time, timedelta
from fractions import Fraction
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.calendar import (
    BillingAnchor,
    Interval,
    Period,
    calendar_month,
    nth_period,
    period_after,
    period_containing,
    period_from,
    trial_window,
)
from shared.domain.errors import CalendarError, InvalidValueError, NaiveDatetimeError

pytestmark = pytest.mark.unit

ZONES = ["UTC", "America/New_York", "Europe/Berlin"]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_anchor_on_the_31st_clamps_to_short_months_and_comes_back():
    # Stripe's documented example: anchored on Jan 31, a monthly subscription bills Feb 28 (29 in a
    # leap year), then Mar 31, Apr 30, ...
    anchor = BillingAnchor(day=31)
    starts = [nth_period(anchor, Interval.MONTH, utc(2024, 1, 31), n).start for n in range(5)]
    assert starts == [utc(2024, 1, 31), utc(2024, 2, 29), utc(2024, 3, 31), utc(2024, 4, 30), utc(2024, 5, 31)]
    non_leap = [nth_period(anchor, Interval.MONTH, utc(2023, 1, 31), n).start for n in range(3)]
    assert non_leap == [utc(2023, 1, 31), utc(2023, 2, 28), utc(2023, 3, 31)]


def test_anchor_on_the_2nd_always_bills_on_the_2nd():
    anchor = BillingAnchor(day=2)
    starts = [nth_period(anchor, Interval.MONTH, utc(2023, 9, 2), n).start.day for n in range(12)]
    assert set(starts) == {2}


def test_yearly_anchor_on_leap_day_falls_back_to_feb_28_in_common_years():
    anchor = BillingAnchor(day=29, month=2)
    assert period_containing(anchor, Interval.YEAR, utc(2025, 6, 1)) == Period(utc(2025, 2, 28), utc(2026, 2, 28))
    assert period_containing(anchor, Interval.YEAR, utc(2027, 6, 1)) == Period(utc(2027, 2, 28), utc(2028, 2, 29))


def test_periods_keep_the_local_wall_clock_across_dst():
    anchor = BillingAnchor(day=1, time_of_day=time(9, 0), tz="America/New_York")
    march = period_containing(anchor, Interval.MONTH, utc(2024, 3, 15))
    assert march.start == utc(2024, 3, 1, 14)  # 09:00 EST
    assert march.end == utc(2024, 4, 1, 13)  # 09:00 EDT
    assert march.duration_seconds() == 31 * 86_400 - 3_600


def test_anchor_time_inside_the_spring_forward_gap_resolves_deterministically():
    anchor = BillingAnchor(day=10, time_of_day=time(2, 30), tz="America/New_York")
    period = period_containing(anchor, Interval.MONTH, utc(2024, 3, 20))
    # 02:30 does not exist on 2024-03-10 in New York; it is read with the pre-jump offset (EST).
    assert period.start == utc(2024, 3, 10, 7, 30)
    assert period.start.astimezone(ZoneInfo("America/New_York")).hour == 3


def test_calendar_month_runs_from_local_midnight_on_the_first():
    berlin = calendar_month(utc(2024, 3, 31, 23), "Europe/Berlin")
    assert berlin == Period(utc(2024, 3, 31, 22), utc(2024, 4, 30, 22))
    assert calendar_month(utc(2024, 2, 10)) == Period(utc(2024, 2, 1), utc(2024, 3, 1))


def test_calendar_month_asked_in_turn_across_zones_and_month_ends_is_always_the_containing_one():
    # the last month per zone is remembered: every answer must still be the month that contains the instant
    instants = [utc(2024, 3, 31, 21, 59), utc(2024, 3, 31, 22), utc(2024, 3, 31, 23, 59), utc(2024, 4, 1),
                utc(2024, 2, 29, 23), utc(2024, 4, 30, 22), utc(2024, 3, 15)]
    zones = ["Europe/Berlin", "UTC", "America/New_York", "Europe/Berlin"]
    for _ in range(2):
        for at in instants:
            for tz in zones:
                month = calendar_month(at, tz)
                assert month.contains(at)
                assert month == period_containing(BillingAnchor(day=1, tz=tz), Interval.MONTH, at)
    with pytest.raises(NaiveDatetimeError):
        calendar_month(datetime(2024, 3, 15), "UTC")


def test_trial_window_counts_calendar_days_in_the_customer_zone():
    window = trial_window(utc(2024, 3, 1, 17), 14, "America/New_York")
    assert window.start == utc(2024, 3, 1, 17)
    assert window.end == utc(2024, 3, 15, 16)  # same local 12:00, one hour earlier in UTC after DST


def test_remaining_fraction_is_exact_to_the_second():
    period = Period(utc(2024, 1, 1), utc(2024, 1, 31))
    assert period.remaining_fraction(utc(2024, 1, 16)) == Fraction(1, 2)
    assert period.remaining_fraction(utc(2023, 12, 1)) == 1
    assert period.remaining_fraction(utc(2024, 2, 1)) == 0
    with_micros = period.remaining_fraction(utc(2024, 1, 16).replace(microsecond=999_999))
    assert with_micros == Fraction(1, 2)


def test_period_is_half_open_and_needs_aware_ordered_instants():
    period = Period(utc(2024, 1, 1), utc(2024, 2, 1))
    assert period.contains(utc(2024, 1, 1)) and not period.contains(utc(2024, 2, 1))
    with pytest.raises(InvalidValueError):
        Period(utc(2024, 2, 1), utc(2024, 1, 1))
    with pytest.raises(NaiveDatetimeError):
        Period(datetime(2024, 1, 1), utc(2024, 2, 1))


def test_bad_anchors_and_zones_are_refused():
    with pytest.raises(InvalidValueError):
        BillingAnchor(day=32)
    with pytest.raises(CalendarError):
        BillingAnchor(day=1, tz="Mars/Olympus_Mons")


def test_period_after_a_stub_runs_to_the_next_anchored_boundary():
    anchor = BillingAnchor(day=15)
    stub = period_from(anchor, Interval.MONTH, utc(2024, 1, 20, 8))
    assert stub == Period(utc(2024, 1, 20, 8), utc(2024, 2, 15))
    assert period_after(stub, anchor, Interval.MONTH) == Period(utc(2024, 2, 15), utc(2024, 3, 15))


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("day", range(1, 32))
def test_36_consecutive_periods_have_no_gap_or_overlap_for_every_anchor_day(day, tz):
    anchor = BillingAnchor(day=day, time_of_day=time(0, 30), tz=tz)
    zone = ZoneInfo(tz)
    for interval, first in ((Interval.MONTH, utc(2023, 12, 20)), (Interval.YEAR, utc(2023, 6, 1))):
        periods = [nth_period(anchor, interval, first, n) for n in range(36)]
        by_stepping = [periods[0]]
        for _ in range(35):
            by_stepping.append(period_after(by_stepping[-1], anchor, interval))
        assert by_stepping == periods
        for earlier, later in pairwise(periods):
            assert earlier.end == later.start
        for period in periods:
            local = period.start.astimezone(zone)
            assert local.day == min(day, stdlib_calendar.monthrange(local.year, local.month)[1])
            assert period_containing(anchor, interval, period.end - timedelta(microseconds=1)) == period


@settings(max_examples=200, deadline=None)
@given(
    day=st.integers(min_value=1, max_value=31),
    tz=st.sampled_from(ZONES),
    at_time=st.times(),
    month=st.integers(min_value=1, max_value=12),
    interval=st.sampled_from(list(Interval)),
    instant=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
)
def test_every_instant_belongs_to_exactly_one_anchored_period(day, tz, at_time, month, interval, instant):
    anchor = BillingAnchor(day=day, time_of_day=at_time, tz=tz, month=month)
    period = period_containing(anchor, interval, instant)
    assert period.contains(instant)
    following = period_after(period, anchor, interval)
    assert following.start == period.end
    assert period_containing(anchor, interval, following.start) == following


@pytest.mark.parametrize("name", ["America", "0" * 300, "", "../etc"])
def test_a_name_that_is_not_a_zone_file_is_a_calendar_error_not_an_os_error(name):
    from shared.domain.calendar import zone
    from shared.domain.errors import CalendarError

    with pytest.raises(CalendarError):
        zone(name)
