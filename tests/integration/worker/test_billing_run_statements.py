"""The close of a run of subscriptions is a fixed number of statements, whatever the run's size: everything is
prefetched in a few set-based reads and written with COPY or one multi-row statement per table (issue 17).
A statement per subscription anywhere in the close (a lock, an upsert, an executemany) makes the counts differ."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.usage import MeterMap, UsageMaterializer
from services.billing_worker.bootstrap import billing_handlers, message_bus, sql_unit_of_work
from shared.adapters.catalog_file import load_default_catalog
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import ClosePeriod, CreateSubscription

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
CATALOG = load_default_catalog()
BUS = message_bus(billing_handlers())
UOW = sql_unit_of_work(CATALOG)
USAGE = UsageMaterializer(MeterMap.from_catalog(CATALOG))


def _subscribe(conn: sa.Connection, n: int) -> list[tuple[str, str]]:
    tag = uuid.uuid4().hex[:8]
    subs = [(f"sub_{tag}_{i:04d}", f"cus_{tag}_{i:04d}") for i in range(n)]
    creates = [CreateSubscription(subscription_id=s, customer_id=c, plan_id="pro", currency="USD",
                                  payment_method_id="pm_card_visa", coupon_id="PARTNER10", tax_rate_bps=800)
               for s, c in subs]
    BUS.handle(UOW(conn), [(new_envelope("subscription.create", p.model_dump(mode="json"), producer="test",
                                         occurred_at=JAN_1), p) for p in creates], JAN_1)
    at = (JAN_1 + timedelta(days=9)).isoformat()
    USAGE.apply(conn, [USAGE.decode(new_envelope("usage.recorded", {
        "transaction_id": f"tx-{s}", "customer_id": c, "subscription_id": s, "event_type": "inference",
        "timestamp": at, "properties": {"cost_usd_micros": 2_750_000}, "received_at": at}, producer="test",
        occurred_at=JAN_1).to_bytes()) for s, c in subs])
    return subs


def _statements_to_close(conn: sa.Connection, subs: list[tuple[str, str]]) -> int:
    """Statements sent while closing `subs` in one run (an executemany counts one per parameter set)."""
    count = 0

    def counted(_conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any,
                executemany: bool) -> None:
        nonlocal count
        count += len(parameters) if executemany else 1

    closes = [ClosePeriod(subscription_id=s, customer_id=c, period_end=FEB_1) for s, c in subs]
    sa.event.listen(conn, "before_cursor_execute", counted)
    try:
        BUS.handle(UOW(conn), [(new_envelope("period.close", p.model_dump(mode="json"), producer="test",
                                             occurred_at=FEB_1), p) for p in closes], FEB_1)
    finally:
        sa.event.remove(conn, "before_cursor_execute", counted)
    return count


def test_closing_twice_as_many_subscriptions_sends_the_same_number_of_statements(engine: sa.Engine) -> None:
    with engine.connect() as conn, conn.begin():
        small, large = _subscribe(conn, 220), _subscribe(conn, 440)  # both above the COPY threshold (200)
        statements = (_statements_to_close(conn, small), _statements_to_close(conn, large))
        invoices = conn.execute(sa.text(
            "SELECT count(*) FROM invoices WHERE kind = 'period_close' AND period_end = :end"),
            {"end": FEB_1}).scalar_one()
        conn.rollback()
    assert invoices == 660
    assert statements[0] == statements[1], statements
    assert statements[0] < 60, statements  # a handful per table, not one per subscription
