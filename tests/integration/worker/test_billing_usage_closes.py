"""The set-based usage close of a billing run answers, for each subscription, exactly what closing it alone
answers: same totals, same late adjustments, same buckets marked billed, and the same idempotency."""

from __future__ import annotations

import random
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
from services.billing_worker.adapters.usage_close import close_usage, close_usages

pytestmark = pytest.mark.integration

METERS = MeterMap({"inference": MeterRule("inference", "cost_usd_micros"),
                   "report_generated": MeterRule("reports", None)})
JAN = datetime(2026, 1, 1, tzinfo=UTC)


def _period(i: int) -> tuple[datetime, datetime]:
    """Some periods on the hour, some starting or ending inside an hour, one shorter than an hour."""
    if i % 5 == 0:
        return JAN, JAN + timedelta(days=31)
    if i % 5 == 1:
        start = JAN + timedelta(minutes=17, seconds=3)
        return start, start + timedelta(days=31)
    if i % 5 == 2:
        return JAN, JAN + timedelta(days=31, minutes=42)
    if i % 5 == 3:
        return JAN, JAN + timedelta(minutes=40)
    start = JAN + timedelta(hours=2, minutes=30)
    return start, start + timedelta(days=30, hours=1)


def _middle(period: tuple[datetime, datetime]) -> datetime:
    return period[0] + (period[1] - period[0]) / 2


def _usage(prefix: str, i: int, rng: random.Random) -> list[UsageItem]:
    start, end = _period(i)
    items = []
    for k in range(rng.randint(0, 6)):
        # Before the period (late), inside it, in its edge hours, and after it (next period).
        at = rng.choice([start - timedelta(minutes=5), start, start + timedelta(minutes=rng.randint(1, 90)),
                         start + timedelta(days=rng.randint(1, 20)), end - timedelta(seconds=1), end,
                         end + timedelta(minutes=3)])
        meter = rng.choice(["inference", "reports"])
        event_type = "inference" if meter == "inference" else "report_generated"
        items.append(UsageItem(f"cus_{prefix}{i}", f"tx{k}", f"{prefix}{i}", event_type, meter,
                               Decimal(rng.randint(1, 10_000)), at, at))
    return items


def _billed(engine: sa.Engine, prefix: str) -> list[tuple[str, str, datetime, Decimal, int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT subscription_id, meter_id, bucket_start, billed_quantity, billed_events FROM usage_aggregates "
            "WHERE subscription_id LIKE :p ORDER BY 1, 2, 3"), {"p": prefix + "%"}).all()
    return [(r[0].removeprefix(prefix), r[1], r[2], Decimal(r[3]), r[4]) for r in rows]


def test_closing_many_subscriptions_at_once_answers_what_closing_each_alone_answers(engine):
    subscriptions = 60
    materializer = UsageMaterializer(METERS)
    for prefix in ("alone_", "many_"):
        rng = random.Random(11)
        with engine.begin() as conn:
            materializer.apply(conn, [item for i in range(subscriptions) for item in _usage(prefix, i, rng)])

    alone = {}
    for i in range(subscriptions):
        with engine.begin() as conn:
            alone[i] = close_usage(conn, f"alone_{i}", *_period(i))
    with engine.begin() as conn:
        many = close_usages(conn, [(f"many_{i}", *_period(i)) for i in range(subscriptions)])

    assert {int(sub.removeprefix("many_")): closed for sub, closed in many.items()} == alone
    assert any(closed.late for closed in alone.values()) and any(closed.totals for closed in alone.values())
    assert _billed(engine, "many_") == _billed(engine, "alone_")

    # Late events after the close: both ways bill them once, on the next close, as adjustments.
    for prefix in ("alone_", "many_"):
        with engine.begin() as conn:
            materializer.apply(conn, [UsageItem(f"cus_{prefix}{i}", "late", f"{prefix}{i}", "inference",
                                                "inference", Decimal(7), _middle(_period(i)), JAN)
                                      for i in range(subscriptions)])
    nexts = {i: (_period(i)[1], _period(i)[1] + timedelta(days=28)) for i in range(subscriptions)}
    with engine.begin() as conn:
        second_alone = {i: close_usage(conn, f"alone_{i}", *nexts[i]) for i in range(subscriptions)}
        second_many = close_usages(conn, [(f"many_{i}", *nexts[i]) for i in range(subscriptions)])
    assert {int(s.removeprefix("many_")): c for s, c in second_many.items()} == second_alone
    assert all(c.late_by_meter().get("inference", 0) >= 7 for c in second_alone.values())


def test_a_repeated_close_in_a_batch_returns_the_stored_answer_and_bills_nothing_twice(engine):
    materializer = UsageMaterializer(METERS)
    with engine.begin() as conn:
        materializer.apply(conn, [UsageItem("cus_rep", "a", "sub_rep", "inference", "inference", Decimal(5),
                                            JAN + timedelta(days=2), JAN)])
    with engine.begin() as conn:
        first = close_usages(conn, [("sub_rep", JAN, JAN + timedelta(days=31))])
    with engine.begin() as conn:
        materializer.apply(conn, [UsageItem("cus_rep", "b", "sub_rep", "inference", "inference", Decimal(9),
                                            JAN + timedelta(days=3), JAN)])
    with engine.begin() as conn:
        again = close_usages(conn, [("sub_rep", JAN, JAN + timedelta(days=31)),
                                    ("sub_other", JAN, JAN + timedelta(days=31))])
    assert again["sub_rep"] == first["sub_rep"]
    assert first["sub_rep"].totals == {"inference": Decimal(5)}
    assert again["sub_other"].totals == {} and again["sub_other"].late == ()


def test_a_subscription_twice_in_one_close_is_refused(engine):
    with engine.begin() as conn, pytest.raises(ValueError, match="twice"):
        close_usages(conn, [("sub_dup", JAN, JAN + timedelta(days=1)), ("sub_dup", JAN, JAN + timedelta(days=2))])
