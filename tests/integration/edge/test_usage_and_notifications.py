"""Reads of usage so far (usage, credits left, estimated charge) and of the dunning notifications.

The rows read here belong to the billing worker (usage, ledger) and to the dunning service
(notifications); each test writes them as those services would, then reads them through the API.
tests/integration/edge/test_pipeline.py shows the same usage read fed by the real worker.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import credit_entries, credit_grants, subscriptions
from shared.adapters.postgres.schema.dunning import dunning_cases, dunning_notifications
from shared.adapters.postgres.schema.usage import usage_aggregates, usage_events

from .conftest import ADMIN, bearer, new_key, onboard, subscribe

pytestmark = pytest.mark.integration

PERIOD_START = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
PERIOD_END = datetime(2026, 4, 10, 12, 30, tzinfo=UTC)


def _usage(conn: sa.Connection, sid: str, cid: str, meter: str, at: datetime, quantity: str,
           billed: bool = False) -> None:
    """One stored event and its hourly aggregate, as the worker's materialiser leaves them."""
    q = Decimal(quantity)
    conn.execute(usage_events.insert().values(
        customer_id=cid, transaction_id=uuid.uuid4().hex, subscription_id=sid, meter_id=meter,
        event_type="inference" if meter == "inference" else "storage_usage", quantity=q, occurred_at=at,
        received_at=at))
    bucket = at.replace(minute=0, second=0, microsecond=0)
    existing = conn.execute(sa.select(usage_aggregates).where(
        usage_aggregates.c.subscription_id == sid, usage_aggregates.c.meter_id == meter,
        usage_aggregates.c.bucket_start == bucket)).first()
    if existing is None:
        conn.execute(usage_aggregates.insert().values(subscription_id=sid, meter_id=meter, bucket_start=bucket,
                                                      quantity=q, event_count=1, billed_quantity=q if billed else 0))
    else:
        conn.execute(sa.update(usage_aggregates).where(
            usage_aggregates.c.subscription_id == sid, usage_aggregates.c.meter_id == meter,
            usage_aggregates.c.bucket_start == bucket).values(
            quantity=usage_aggregates.c.quantity + q, event_count=usage_aggregates.c.event_count + 1,
            billed_quantity=usage_aggregates.c.billed_quantity + (q if billed else 0)))


def _grant(conn: sa.Connection, sid: str, cid: str, meter: str, *, minor: int | None = None,
           units: str | None = None, source: str = "plan_included", priority: int = 100,
           effective: datetime = PERIOD_START, expires: datetime | None = PERIOD_END,
           consumed_minor: int = 0) -> str:
    grant_id = f"gr_{uuid.uuid4().hex[:10]}"
    conn.execute(credit_grants.insert().values(
        grant_id=grant_id, subscription_id=sid, customer_id=cid, meter_id=meter, source=source,
        amount_minor=minor, currency="USD" if minor is not None else None,
        units=Decimal(units) if units is not None else None, priority=priority, effective_at=effective,
        expires_at=expires, granted_at=effective))
    conn.execute(credit_entries.insert().values(
        entry_id=f"{grant_id}:grant", grant_id=grant_id, subscription_id=sid, kind="grant", amount_minor=minor,
        units=Decimal(units) if units is not None else None, occurred_at=effective))
    if consumed_minor:
        conn.execute(credit_entries.insert().values(
            entry_id=f"{grant_id}:consume", grant_id=grant_id, subscription_id=sid, kind="consume",
            amount_minor=-consumed_minor, occurred_at=effective, reference="test"))
    return grant_id


async def test_usage_so_far_shows_period_usage_late_usage_credits_left_and_the_charge(client, worker, container):
    customer = await onboard(client)
    cid = customer["customer_id"]
    sid = (await subscribe(client, cid, "pro"))["subscription_id"]
    with container.engine.begin() as conn:
        # The worker's view of a period that starts at half past the hour.
        conn.execute(sa.update(subscriptions).where(subscriptions.c.subscription_id == sid).values(
            current_period_start=PERIOD_START, current_period_end=PERIOD_END))
        _usage(conn, sid, cid, "inference", datetime(2026, 3, 10, 12, 10, tzinfo=UTC), "1000000", billed=True)
        _usage(conn, sid, cid, "inference", datetime(2026, 3, 10, 12, 20, tzinfo=UTC), "500000")  # late
        _usage(conn, sid, cid, "inference", datetime(2026, 3, 10, 12, 45, tzinfo=UTC), "2000000")
        _usage(conn, sid, cid, "inference", datetime(2026, 3, 12, 14, 5, tzinfo=UTC), "1500000")
        _usage(conn, sid, cid, "inference", datetime(2026, 3, 9, 10, 0, tzinfo=UTC), "250000")  # late
        _usage(conn, sid, cid, "storage", datetime(2026, 3, 11, 0, 0, tzinfo=UTC), "1200")
        _grant(conn, sid, cid, "inference", minor=200, consumed_minor=20)  # USD 2.00 included, 0.20 used
        _grant(conn, sid, cid, "inference", minor=50, source="top_up", priority=50,
               effective=datetime(2026, 3, 1, tzinfo=UTC), expires=None)
        _grant(conn, sid, cid, "inference", minor=1000, source="promotional",
               effective=datetime(2026, 3, 1, tzinfo=UTC), expires=datetime(2026, 3, 20, tzinfo=UTC))  # gone by then
        _grant(conn, sid, cid, "storage", units="1000")
    reader = bearer(await new_key(client, ["read"], org_id=cid))

    response = await client.get(f"/v1/subscriptions/{sid}/usage", headers=reader)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["period_start"], body["plan_id"], body["currency"]) == ("2026-03-10T12:30:00Z", "pro", "USD")
    inference, storage = body["meters"]
    # 2.00 + 1.50 USD of inference this period; 0.75 USD arrived late for earlier periods.
    assert (Decimal(inference["quantity"]), Decimal(inference["late_quantity"])) == (3_500_000, 750_000)
    # Credits usable at the period's end: 1.80 included + 0.50 top-up (the promotion expires before).
    assert (inference["gross_minor"], inference["credit_remaining_minor"], inference["credit_applied_minor"],
            inference["estimated_charge_minor"]) == (350, 230, 230, 120)
    # 1200 GB-months against 1000 included: 200 x USD 0.018.
    assert (Decimal(storage["quantity"]), Decimal(storage["credit_applied_units"]),
            Decimal(storage["billable_quantity"]), storage["estimated_charge_minor"]) == (1200, 1000, 200, 360)
    assert body["estimated_usage_charge_minor"] == 480
    assert sorted(c["source"] for c in body["credits"]) == ["plan_included", "plan_included", "top_up"]


async def test_usage_so_far_of_a_fresh_subscription_is_zero_and_its_meters_are_listed(client, worker):
    customer = await onboard(client)
    sid = (await subscribe(client, customer["customer_id"], "free"))["subscription_id"]

    body = (await client.get(f"/v1/subscriptions/{sid}/usage", headers=ADMIN)).json()

    assert [(m["meter_id"], m["treatment"], m["estimated_charge_minor"]) for m in body["meters"]] == [
        ("inference", "block", 0), ("storage", "block", 0)]
    assert body["estimated_usage_charge_minor"] == 0


async def test_usage_so_far_is_private_to_the_org_and_unknown_subscriptions_are_404(client, worker):
    org_a, org_b = await onboard(client), await onboard(client)
    sid_b = (await subscribe(client, org_b["customer_id"], "pro"))["subscription_id"]
    key_a = bearer(await new_key(client, ["read"], org_id=org_a["customer_id"]))

    other = await client.get(f"/v1/subscriptions/{sid_b}/usage", headers=key_a)
    unknown = await client.get("/v1/subscriptions/sub_nope/usage", headers=ADMIN)

    assert (other.status_code, unknown.status_code) == (403, 404)
    assert unknown.headers["content-type"] == "application/problem+json"


def _notify(conn: sa.Connection, customer_id: str, n: int) -> None:
    case_id = f"case_{uuid.uuid4().hex[:8]}"
    conn.execute(dunning_cases.insert().values(
        case_id=case_id, invoice_id=f"in_{case_id}", subscription_id=f"sub_{customer_id}", customer_id=customer_id,
        amount_minor=900, currency="USD", opened_at=datetime(2026, 3, 10, tzinfo=UTC)))
    for i in range(n):
        conn.execute(dunning_notifications.insert().values(
            notification_id=uuid.uuid4(), case_id=case_id, action_key=f"notify:{i}", customer_id=customer_id,
            subscription_id=f"sub_{customer_id}", invoice_id=f"in_{case_id}", kind="payment_failed",
            channel="email", recipient="billing@acme.test", subject=f"Payment failed ({i})", body="...",
            data={"attempt": i}, decided_at=datetime(2026, 3, 10, tzinfo=UTC) + timedelta(days=i)))


async def test_notifications_page_newest_first_and_an_org_key_sees_only_its_own(client, container):
    org_a, org_b = await onboard(client), await onboard(client)
    with container.engine.begin() as conn:
        _notify(conn, org_a["customer_id"], 3)
        _notify(conn, org_b["customer_id"], 1)
    key_a = bearer(await new_key(client, ["read"], org_id=org_a["customer_id"]))

    first = await client.get("/v1/notifications", params={"limit": 2}, headers=key_a)
    second = await client.get("/v1/notifications", params={"limit": 2, "cursor": first.json()["next_cursor"]},
                               headers=key_a)
    of_b = await client.get("/v1/notifications", params={"customer_id": org_b["customer_id"]}, headers=key_a)
    admin_b = await client.get("/v1/notifications", params={"customer_id": org_b["customer_id"]}, headers=ADMIN)
    admin_all = await client.get("/v1/notifications", params={"limit": 500}, headers=ADMIN)

    subjects = [n["subject"] for n in first.json()["data"] + second.json()["data"]]
    assert subjects == ["Payment failed (2)", "Payment failed (1)", "Payment failed (0)"]
    assert second.json()["next_cursor"] is None
    assert of_b.status_code == 403
    assert [n["customer_id"] for n in admin_b.json()["data"]] == [org_b["customer_id"]]
    assert {org_a["customer_id"], org_b["customer_id"]} <= {n["customer_id"] for n in admin_all.json()["data"]}


async def test_notifications_refuse_ingest_keys_and_foreign_cursors(client):
    customer = await onboard(client)
    ingest_key = bearer(await new_key(client, ["ingest"], org_id=customer["customer_id"]))

    by_ingest = await client.get("/v1/notifications", headers=ingest_key)
    bad_cursor = await client.get("/v1/notifications", params={"cursor": "bm90LWEtbnVtYmVy"}, headers=ADMIN)

    assert by_ingest.status_code == 403
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["errors"] == [{"field": "cursor", "reason": "not a cursor of this API"}]
