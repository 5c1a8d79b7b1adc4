"""How a close groups late usage (shared/domain/late_usage.py): the one rule the worker's close and the edge's
preview of it both call."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from shared.domain.calendar import BillingAnchor, Interval, Period
from shared.domain.catalog import Catalog, MeterId
from shared.domain.late_usage import group_late_usage, late_usage_as_rated
from shared.domain.rating import LateUsage


def hour(day: int, h: int) -> datetime:
    return datetime(2026, 1, day, h, tzinfo=UTC)


def test_late_hours_are_one_item_per_meter_over_the_span_of_hours_they_came_from() -> None:
    late = group_late_usage([
        ("storage", hour(20, 9), hour(20, 9), Decimal(4)),
        ("api_calls", hour(31, 22), hour(31, 22), Decimal("1.5")),
        ("api_calls", hour(12, 3), hour(12, 3), Decimal(2)),
        ("api_calls", hour(20, 7), hour(20, 7), Decimal("0.5")),
    ])
    assert late == [  # sorted by meter; [first hour, end of the last hour); quantities summed
        LateUsage(MeterId("api_calls"), Period(hour(12, 3), hour(31, 23)), Decimal(4)),
        LateUsage(MeterId("storage"), Period(hour(20, 9), hour(20, 10)), Decimal(4)),
    ]


def test_a_meter_whose_late_quantity_sums_to_zero_bills_nothing() -> None:
    assert group_late_usage([("api_calls", hour(3, 1), hour(3, 1), Decimal(2)),
                             ("api_calls", hour(3, 2), hour(3, 2), Decimal(-2))]) == []
    assert group_late_usage([]) == []


def test_one_run_per_meter_groups_like_the_same_usage_hour_by_hour() -> None:
    # the preview reads one (first hour, last hour, quantity) per meter; the close marks hour by hour
    per_hour = group_late_usage([("api_calls", hour(5, 1), hour(5, 1), Decimal(1)),
                                 ("api_calls", hour(5, 4), hour(5, 4), Decimal(2))])
    per_meter = group_late_usage([("api_calls", hour(5, 1), hour(5, 4), Decimal(3))])
    assert per_hour == per_meter == [LateUsage(MeterId("api_calls"), Period(hour(5, 1), hour(5, 5)),
                                               Decimal(3))]


TIERED = Catalog.from_dict({"version": 1, "currency": "USD", "meters": [
    {"id": "calls", "name": "Calls", "unit": "call", "event_type": "call", "aggregation": "count"},
    {"id": "storage", "name": "Storage", "unit": "gb", "event_type": "gb", "aggregation": "sum",
     "value_property": "gb"}],
    "plans": [{"id": "tiered", "name": "Tiered", "family": "t", "interval": "month", "price": "10.00", "meters": {
        "calls": {"overage": "bill", "pricing": {"model": "graduated", "tiers": [
            {"up_to": 10, "unit_price": "1.00"}, {"up_to": None, "unit_price": "0.50"}]}},
        "storage": {"overage": "bill", "unit_price": "0.10"}}}]}).plan("tiered")


def test_late_units_of_a_tiered_meter_are_grouped_per_period_with_what_it_billed_before() -> None:
    hours = [("calls", hour(5, 1), Decimal(3)), ("calls", hour(31, 23), Decimal(1)),
             ("calls", datetime(2025, 12, 30, 8, tzinfo=UTC), Decimal(2)), ("storage", hour(20, 9), Decimal(4))]
    late = group_late_usage((meter, at, at, quantity) for meter, at, quantity in hours)
    billed = {("calls", Period(hour(1, 0), datetime(2026, 2, 1, tzinfo=UTC))): Decimal(8)}

    rated = late_usage_as_rated(late, hours, TIERED, anchor=BillingAnchor(day=1), interval=Interval.MONTH, seats=1,
                                billed_before=lambda meter, period, quantity: billed.get((meter, period), Decimal(0)))

    december = Period(datetime(2025, 12, 1, tzinfo=UTC), hour(1, 0))
    january = Period(hour(1, 0), datetime(2026, 2, 1, tzinfo=UTC))
    assert rated == [  # a per-unit meter as grouped; the tiered one per period, after what that period billed
        LateUsage(MeterId("calls"), december, Decimal(2)),
        LateUsage(MeterId("calls"), january, Decimal(4), billed_quantity=Decimal(8)),
        LateUsage(MeterId("storage"), Period(hour(20, 9), hour(20, 10)), Decimal(4)),
    ]
