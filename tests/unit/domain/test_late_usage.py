"""How a close groups late usage (shared/domain/late_usage.py): the one rule the worker's close and the edge's
preview of it both call."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from shared.domain.calendar import Period
from shared.domain.catalog import MeterId
from shared.domain.late_usage import group_late_usage
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
