"""Previews (issue 14, item 5) through the API and the REAL billing worker (a subprocess) on a simulated billing
clock: each preview is compared, line by line and to the cent, with the invoice the worker later issues.

Pro: USD 9.00 a month in advance, USD 2.00 of inference included, inference at USD 0.000001 a micro-USD.
Team: USD 20.00 a seat. The customers pay 10% tax. The tests share the module's clock, so each works from
its own subscription's period.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from .conftest import ADMIN, call, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration
LINE_FIELDS = ("kind", "description", "amount_minor", "quantity", "unit_price", "period_start", "period_end",
               "meter_id", "proration")
TOTALS = ("invoice_id", "kind", "period_start", "period_end", "currency", "subtotal_minor", "discount_minor",
          "credits_applied_minor", "tax_minor", "total_minor", "amount_due_minor")


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings)


async def subscribe(client: httpx.AsyncClient, plan_id: str, **fields: Any) -> tuple[str, str, dict[str, Any]]:
    customer = await onboard(client, payment_method_id="pm_card_visa", tax_rate_bps=1000)
    created = await call(client, "POST", "/v1/subscriptions",
                            {"customer_id": customer["customer_id"], "plan_id": plan_id, **fields})
    assert created.status_code == 201, created.text
    return customer["customer_id"], created.json()["subscription_id"], created.json()


async def advance(client: httpx.AsyncClient, seconds: int) -> datetime:
    moved = await client.post("/v1/clock/advance", json={"seconds": seconds}, headers=ADMIN)
    assert moved.status_code == 200, moved.text
    return datetime.fromisoformat(moved.json()["now"])


async def invoices(client: httpx.AsyncClient, customer_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/customers/{customer_id}/invoices", params={"limit": 100}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def _value(key: str, value: Any) -> Any:
    """A field read back as a value (numbers and instants are formatted differently by the two views)."""
    if value is None:
        return None
    if key in ("quantity", "unit_price"):
        return Decimal(value)
    if key in ("period_start", "period_end"):
        return datetime.fromisoformat(value)
    return value


def assert_issued_as_previewed(preview: dict[str, Any], issued: dict[str, Any]) -> None:
    assert {k: _value(k, issued[k]) for k in TOTALS} == {k: _value(k, preview[k]) for k in TOTALS}
    assert [{k: _value(k, line[k]) for k in LINE_FIELDS} for line in issued["lines"]] == [
        {k: _value(k, line[k]) for k in LINE_FIELDS} for line in preview["lines"]]


def amounts(invoice: dict[str, Any]) -> list[tuple[str, int]]:
    return [(line["kind"], line["amount_minor"]) for line in invoice["lines"]]


async def test_an_immediate_upgrade_is_issued_as_previewed_at_the_same_instant(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    customer_id, sid, created = await subscribe(client, "pro")
    start = datetime.fromisoformat(created["current_period_start"])
    now = await advance(client, 10 * 86_400)  # 21 of the period's 31 days left
    assert now == start + timedelta(days=10)

    response = await client.post(f"/v1/subscriptions/{sid}/preview", json={"plan_id": "team"}, headers=ADMIN)

    assert response.status_code == 200, response.text
    preview = response.json()
    assert (preview["change"], preview["timing"], preview["deferred"]) == ("upgrade", "immediate", False)
    assert datetime.fromisoformat(preview["at"]) == now
    # Pro's unused 9.00 x 21/31 = -6.10, Team's 20.00 x 21/31 = 13.55; tax 10% of 7.45 = 0.745 -> 0.75
    assert amounts(preview["invoice_now"]) == [("proration", -610), ("proration", 1355), ("tax", 75)]
    assert preview["invoice_now"]["total_minor"] == 820
    assert preview["next_invoice"]["plan_id"] == "team"

    changed = await call(client, "POST", f"/v1/subscriptions/{sid}/change-plan", {"plan_id": "team"})

    assert changed.status_code == 200 and changed.json()["plan_id"] == "team", changed.text
    [issued] = [i for i in await invoices(client, customer_id) if i["kind"] == "subscription_change"]
    assert_issued_as_previewed(preview["invoice_now"], issued)
    assert real_worker.poll() is None, "the worker exited"


async def test_the_period_close_is_issued_as_the_upcoming_invoice_showed_it(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    customer_id, sid, created = await subscribe(client, "pro", coupon_id="PARTNER10")
    start = datetime.fromisoformat(created["current_period_start"])
    end = datetime.fromisoformat(created["current_period_end"])
    await advance(client, 2 * 86_400)
    events = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": customer_id,
               "event_type": "inference", "timestamp": (start + timedelta(hours=hours)).isoformat(),
               "properties": {"cost_usd_micros": micros}} for hours, micros in ((3, 2_000_000), (30, 1_500_000))]
    ingested = await client.post("/v1/ingest", json=events, headers=ADMIN)
    assert ingested.status_code in (200, 202), ingested.text

    async def upcoming_with_usage() -> dict[str, Any] | None:
        response = await client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=ADMIN)
        assert response.status_code == 200, response.text
        body = response.json()
        return body if ("usage", 350) in amounts(body["invoice"]) else None

    upcoming = await until(upcoming_with_usage, "usage on the upcoming invoice")
    preview = upcoming["invoice"]
    assert (preview["kind"], preview["estimate"], datetime.fromisoformat(preview["billed_at"])) == (
        "period_close", True, end)
    assert [line["estimate"] for line in preview["lines"]] == [True, True, False, True, True]
    # usage 3.50, included credit -2.00, the next period's fee 9.00, PARTNER10 10% of the fee and the usage
    # after credits (9.00 + 1.50) = -1.05, tax 10% of 9.45 = 0.945 -> 0.95: total 10.40
    assert amounts(preview) == [("usage", 350), ("credit", -200), ("fee", 900), ("discount", -105), ("tax", 95)]
    assert (preview["subtotal_minor"], preview["discount_minor"], preview["credits_applied_minor"],
            preview["tax_minor"], preview["total_minor"], preview["amount_due_minor"]) == (
        1250, 105, 200, 95, 1040, 1040)

    await advance(client, int((end - start).total_seconds()))  # past the period end: the scheduler closes it

    async def closed() -> list[dict[str, Any]]:
        return [i for i in await invoices(client, customer_id) if i["kind"] == "period_close"]

    [issued] = await until(closed, "period close invoice")
    assert_issued_as_previewed(preview, issued)
    assert real_worker.poll() is None, "the worker exited"


async def test_a_seat_change_preview_a_deferred_downgrade_preview_and_refusals(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    customer_id, team, created = await subscribe(client, "team", seats=2)
    start = datetime.fromisoformat(created["current_period_start"])
    end = datetime.fromisoformat(created["current_period_end"])
    now = await advance(client, 86_400)
    days_left = (end - now) / (end - start)

    seats = await client.post(f"/v1/subscriptions/{team}/preview", json={"seats": 3}, headers=ADMIN)
    downgrade = await client.post(f"/v1/subscriptions/{team}/preview", json={"plan_id": "pro"}, headers=ADMIN)
    same = await client.post(f"/v1/subscriptions/{team}/preview", json={"plan_id": "team"}, headers=ADMIN)
    flat = await client.post(f"/v1/subscriptions/{team}/preview", json={"plan_id": "nope"}, headers=ADMIN)

    assert seats.status_code == 200, seats.text
    credit, charge = round(-4000 * days_left), round(6000 * days_left)  # whole cents here (no half cent)
    assert amounts(seats.json()["invoice_now"])[:2] == [("proration", credit), ("proration", charge)]
    assert amounts(seats.json()["next_invoice"]) == [("fee", 6000), ("tax", 600)]  # 3 seats from the next period
    changed = await call(client, "POST", f"/v1/subscriptions/{team}/seats", {"seats": 3})
    assert changed.status_code == 200, changed.text
    [issued] = [i for i in await invoices(client, customer_id) if i["kind"] == "subscription_change"]
    assert_issued_as_previewed(seats.json()["invoice_now"], issued)

    assert downgrade.status_code == 200, downgrade.text
    body = downgrade.json()
    assert (body["change"], body["deferred"], body["invoice_now"]) == ("downgrade", True, None)
    assert datetime.fromisoformat(body["effective_at"]) == end
    assert amounts(body["next_invoice"]) == [("fee", 900), ("tax", 90)]  # Pro's fee from the next period
    # refused as the real command is: 409 with the worker's code; an unknown plan is 422
    assert (same.status_code, same.json()["type"]) == (409, "/problems/rejected/already_on_plan"), same.text
    real = await call(client, "POST", f"/v1/subscriptions/{team}/change-plan", {"plan_id": "team"})
    assert (real.status_code, real.json()["type"]) == (409, same.json()["type"])
    assert flat.status_code == 422, flat.text

    cancelled = await call(client, "POST", f"/v1/subscriptions/{team}/cancel", {"at_period_end": False})
    assert cancelled.status_code == 200, cancelled.text
    nothing = await client.get(f"/v1/subscriptions/{team}/upcoming-invoice", headers=ADMIN)
    unknown = await client.get("/v1/subscriptions/sub_nope/upcoming-invoice", headers=ADMIN)
    assert (nothing.status_code, nothing.json()["type"]) == (409, "/problems/no-upcoming-invoice"), nothing.text
    assert unknown.status_code == 404, unknown.text
    assert real_worker.poll() is None, "the worker exited"
