"""Period close of usage: the period's totals, partial hours at the edges, late events as adjustments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.usage import (
    MeterMap,
    MeterRule,
    UsageItem,
    UsageMaterializer,
)
from services.billing_worker.adapters.usage_close import close_usage
from shared.adapters.postgres.usage_reads import usage_since

pytestmark = pytest.mark.integration

METERS = MeterMap({"inference": MeterRule("inference", "cost_usd_micros"),
                   "report_generated": MeterRule("reports", None)})
START = datetime(2026, 1, 15, 10, 37, 12, tzinfo=UTC)  # periods anchored mid-hour on purpose
END = datetime(2026, 2, 15, 10, 37, 12, tzinfo=UTC)
NEXT_END = datetime(2026, 3, 15, 10, 37, 12, tzinfo=UTC)


def event(sub: str, tx: str, at: datetime, qty: int, meter: str = "inference") -> UsageItem:
    return UsageItem(f"cus_{sub}", tx, sub, "inference" if meter == "inference" else "report_generated", meter,
                     Decimal(qty), at, at)


def ingest(engine, items):
    with engine.begin() as conn:
        UsageMaterializer(METERS).apply(conn, items)


def test_a_close_bills_exactly_the_period_including_partial_hours_at_both_edges(engine):
    sub = "sub_edges"
    ingest(engine, [
        event(sub, "before", START - timedelta(seconds=1), 1),          # previous period (same hour)
        event(sub, "first", START, 10),                                 # first instant of the period
        event(sub, "middle", START + timedelta(days=3), 100),
        event(sub, "last", END - timedelta(seconds=1), 1000),           # last second (same hour as END)
        event(sub, "next", END, 10000),                                 # next period
        event(sub, "report", START + timedelta(days=1), 1, meter="reports"),
    ])
    with engine.begin() as conn:
        closed = close_usage(conn, sub, START, END)

    assert closed.totals == {"inference": Decimal(1110), "reports": Decimal(1)}
    assert closed.late_by_meter() == {"inference": Decimal(1)}  # before the first period: an adjustment

    with engine.begin() as conn:
        following = close_usage(conn, sub, END, NEXT_END)
    assert following.totals == {"inference": Decimal(10000)}
    assert following.late == ()


def test_an_event_for_a_closed_period_becomes_an_adjustment_of_the_next_close_never_lost_nor_doubled(engine):
    sub = "sub_late"
    ingest(engine, [event(sub, "on-time", START + timedelta(days=1), 5)])
    with engine.begin() as conn:
        assert close_usage(conn, sub, START, END).totals == {"inference": Decimal(5)}

    ingest(engine, [event(sub, "late-whole-hour", START + timedelta(days=2), 7),
                    event(sub, "late-edge-hour", END - timedelta(minutes=1), 11),
                    event(sub, "current", END + timedelta(minutes=1), 13)])
    with engine.connect() as conn:
        seen = usage_since(conn, sub, END)
    assert seen.totals == {"inference": Decimal(13)}
    assert seen.pending_late == {"inference": Decimal(18)}

    with engine.begin() as conn:
        second = close_usage(conn, sub, END, NEXT_END)
    assert second.totals == {"inference": Decimal(13)}
    assert second.late_by_meter() == {"inference": Decimal(18)}

    with engine.begin() as conn:
        third = close_usage(conn, sub, NEXT_END, NEXT_END + timedelta(days=31))
    assert third.totals == {} and third.late == ()


def test_closing_the_same_period_twice_returns_the_same_answer(engine):
    sub = "sub_twice"
    ingest(engine, [event(sub, "a", START + timedelta(hours=5), 3)])
    with engine.begin() as conn:
        first = close_usage(conn, sub, START, END)
    ingest(engine, [event(sub, "b", START + timedelta(hours=6), 4)])
    with engine.begin() as conn:
        again = close_usage(conn, sub, START, END)
    assert again == first


def test_identifiers_with_tabs_backslashes_and_newlines_are_stored_verbatim(engine):
    odd = "tx\twith\\odd\nchars\r!"
    ingest(engine, [event("sub_odd", odd, START, 1)])
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT transaction_id FROM usage_events WHERE subscription_id = 'sub_odd'"))
        assert stored.scalar_one() == odd
