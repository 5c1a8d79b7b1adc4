"""The billing run's bulk writes (issue 17): a run of 200+ rows goes through COPY, a smaller one through one
multi-row statement, and both store the same values (JSON documents, lists, UUIDs, instants, decimals, NULLs);
a run's coupon redemptions are upserted once per key whatever the path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.billing_repository import COPY_THRESHOLD, bulk_insert, insert_redemptions
from services.billing_worker.bootstrap import billing_handlers, message_bus, sql_unit_of_work
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.postgres.schema.billing import billing_audit_log
from shared.adapters.postgres.schema.core import outbox
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import ClosePeriod, CreateSubscription
from shared.domain.coupons import CouponId, CouponRedemption
from shared.domain.money import Money

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
PARIS = ZoneInfo("Europe/Paris")
CATALOG = load_default_catalog()
BUS = message_bus(billing_handlers())
UOW = sql_unit_of_work(CATALOG)


def _outbox_rows(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"topic": "billing-events.v1", "message_key": f"sub_{tag}_{i}", "event_id": uuid.uuid4(),
             "event_type": "test.event", "envelope": {"n": i, "tag": tag, "items": [1, "two", None, {"k": 1.5}],
                                                     "nested": {"é": "ü", "quote": "a\"b\\c\td\ne"}}}
            for i in range(n)]


def _audit_rows(n: int, tag: str) -> list[dict[str, Any]]:
    # instants repeat (every pair shares one) and come in two zones: each stored as the instant it is
    return [{"occurred_at": (JAN_1 + timedelta(microseconds=i // 2)).astimezone(PARIS if i % 3 else UTC),
             "actor": "test", "action": "a", "entity_type": "e",
             "entity_id": f"{tag}_{i}", "subscription_id": None, "customer_id": None,
             "command_id": uuid.UUID(int=i), "detail": {"ids": [tag, i]}} for i in range(n)]


@pytest.mark.parametrize("n", [COPY_THRESHOLD - 1, COPY_THRESHOLD + 50])
def test_a_bulk_insert_stores_json_lists_and_uuids_as_given_on_both_paths(engine: sa.Engine, n: int) -> None:
    tag = uuid.uuid4().hex[:8]
    rows, audit = _outbox_rows(n, tag), _audit_rows(n, tag)
    with engine.begin() as conn:
        bulk_insert(conn, outbox, rows, ignore_conflicts_on=["event_id"])
        bulk_insert(conn, billing_audit_log, audit)
        bulk_insert(conn, outbox, rows[:3], ignore_conflicts_on=["event_id"])  # a replay: no second row
        stored = {r.event_id: r for r in conn.execute(sa.select(outbox).where(outbox.c.message_key.like(f"%{tag}%")))}
        logged = {r.entity_id: r for r in conn.execute(
            sa.select(billing_audit_log).where(billing_audit_log.c.entity_id.like(f"{tag}_%")))}
    assert len(stored) == n
    for row in rows:
        assert stored[row["event_id"]].envelope == row["envelope"]
    assert len(logged) == n
    for row in audit:
        got = logged[row["entity_id"]]
        # a UUID in a text column keeps its usual form (with dashes), as str() writes it
        assert (got.command_id, got.detail, got.occurred_at) == (str(row["command_id"]), row["detail"],
                                                                 row["occurred_at"])


def test_a_runs_coupon_redemptions_are_stored_once_per_key_with_the_last_amount_and_the_first_instant(
        engine: sa.Engine) -> None:
    tag = uuid.uuid4().hex[:8]
    subs = [(f"sub_{tag}_{i:04d}", f"cus_{tag}_{i:04d}") for i in range(COPY_THRESHOLD + 10)]
    creates = [CreateSubscription(subscription_id=s, customer_id=c, plan_id="pro", currency="USD",
                                  payment_method_id="pm_card_visa", coupon_id="PARTNER10", tax_rate_bps=800)
               for s, c in subs]
    closes = [ClosePeriod(subscription_id=s, customer_id=c, period_end=FEB_1) for s, c in subs]
    with engine.connect() as conn, conn.begin():
        BUS.handle(UOW(conn), [(new_envelope("subscription.create", p.model_dump(mode="json"), producer="test",
                                             occurred_at=JAN_1), p) for p in creates], JAN_1)
        anchors = dict(conn.execute(sa.text("SELECT subscription_id, anchor_time FROM subscriptions "
                                            "WHERE subscription_id LIKE :t"), {"t": f"sub_{tag}_%"}).all())
        BUS.handle(UOW(conn), [(new_envelope("period.close", p.model_dump(mode="json"), producer="test",
                                             occurred_at=FEB_1), p) for p in closes], FEB_1)
        closed = conn.execute(sa.text(
            "SELECT i.invoice_id, i.subscription_id, i.discount_minor, r.amount_minor, r.redeemed_at, r.coupon_id "
            "FROM invoices i LEFT JOIN coupon_redemptions r USING (invoice_id) "
            "WHERE i.subscription_id LIKE :t AND i.period_end = :end AND i.kind = 'period_close'"),
            {"t": f"sub_{tag}_%", "end": FEB_1}).all()
        # the run's subscription rows went back through COPY: their time-of-day anchors are unchanged
        assert dict(conn.execute(sa.text("SELECT subscription_id, anchor_time FROM subscriptions "
                                         "WHERE subscription_id LIKE :t"), {"t": f"sub_{tag}_%"}).all()) == anchors
        # the same keys again (a draft re-rated at its finalisation): the amount follows, the first instant stays
        def redo(row: Any, extra: int) -> CouponRedemption:
            return CouponRedemption(CouponId("PARTNER10"), f"{row.invoice_id}|redo",
                                    Money(row.discount_minor + extra, "USD"))

        insert_redemptions(conn, [(redo(row, 1), row.subscription_id, row.invoice_id, FEB_1) for row in closed])
        insert_redemptions(conn, [(redo(row, 2), row.subscription_id, row.invoice_id, FEB_1 + timedelta(days=1))
                                  for row in closed])
        redone = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT redemption_key), bool_and(r.amount_minor = i.discount_minor + 2), "
            "bool_and(r.redeemed_at = :feb) FROM coupon_redemptions r JOIN invoices i USING (invoice_id) "
            "WHERE r.redemption_key LIKE '%|redo'"), {"feb": FEB_1}).one()
        conn.rollback()
    assert len(closed) == len(subs)
    for row in closed:  # PARTNER10 on each January: one redemption per invoice, of the invoice's discount
        assert row.discount_minor > 0
        assert (row.coupon_id, row.amount_minor, row.redeemed_at) == ("PARTNER10", row.discount_minor, FEB_1)
    assert tuple(redone) == (len(subs), len(subs), True, True)
