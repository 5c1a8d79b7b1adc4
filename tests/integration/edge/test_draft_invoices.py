"""Draft invoices with a grace period (issue 14, item 2), through the API and the REAL billing worker (a
subprocess running its consumer and scheduler on the edge's schema, topics and simulated clock).

The defect: "late usage becomes adjustments too eagerly": a period was finalised the instant it ended, so usage
of that period reported minutes later landed as a "late usage adjustment" on the NEXT invoice, rated with the
period's included credits already expired. Here the issuer's grace is 1 h (BILLING_INVOICE_GRACE_SECONDS=3600).

Hand-computed (Pro: USD 9.00 a month in advance, inference USD 0.000001 a micro-USD, USD 2.00 included; one
"unit" below is 500,000 micro-USD = USD 0.50; no tax):
- 3 units in the period (1.50, all covered by the included 2.00), 2 more units timestamped 10 minutes before
  the period end arriving 30 minutes after it. The close stores a DRAFT: usage 1.50, credit -1.50, the next
  period's fee 9.00 = 9.00, no number. Finalised at the end of the grace: usage 2.50 (5 units on ONE line),
  credit -2.00, fee 9.00 = 9.50 (what the close would have billed had they arrived on time), numbered, no
  adjustment. Before (grace 0): 9.00 at the close and a 1.00 adjustment on the next invoice (the credit gone).
- 1 more unit of that period after the finalisation: a 0.50 adjustment on the next invoice, as before.
- `POST /v1/invoices/{id}/finalize` inside the grace finalises at once; again: 200, the same number.
- A customer whose own grace is 0 (`PUT /v1/customers/{id}/invoice-settings`): finalised at the close.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from .conftest import advance_to, call, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration
GRACE = 3600
UNIT = 500_000  # micro-USD: USD 0.50


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings, invoice_grace_seconds=GRACE, scheduler_interval_s=0.2)


async def ingest(client: httpx.AsyncClient, customer_id: str, units: int, at: datetime) -> None:
    batch = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": customer_id, "event_type": "inference",
              "timestamp": at.isoformat(), "properties": {"cost_usd_micros": UNIT}} for _ in range(units)]
    response = await call(client, "POST", "/v1/ingest", batch)
    assert response.status_code == 200 and response.json()["accepted"] == units, response.text


async def usage_seen(client: httpx.AsyncClient, sid: str, quantity: int, *, late: bool = False) -> None:
    """Wait until the worker has materialised the usage (the edge's usage-so-far shows it)."""
    async def probe() -> bool:
        body = (await call(client, "GET", f"/v1/subscriptions/{sid}/usage")).json()
        meter = next((m for m in body["meters"] if m["meter_id"] == "inference"), None)
        return meter is not None and int(float(meter["late_quantity" if late else "quantity"])) == quantity
    await until(probe, f"{quantity} {'late ' if late else ''}micro-USD of usage on {sid}")


async def invoice_of(client: httpx.AsyncClient, customer_id: str, period_end: datetime,
                     status: str | None = None) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        page = (await call(client, "GET", f"/v1/customers/{customer_id}/invoices?limit=100")).json()["data"]
        for invoice in page:
            if (invoice["kind"] == "period_close" and datetime.fromisoformat(invoice["period_end"]) == period_end
                    and (status is None or invoice["status"] == status)):
                return dict(invoice)
        return None
    found: dict[str, Any] = await until(probe, f"the {status or ''} invoice of the period ending {period_end}")
    return found


def lines(invoice: dict[str, Any]) -> list[tuple[str, int]]:
    return [(line["kind"], line["amount_minor"]) for line in invoice["lines"]]


async def test_late_usage_inside_the_grace_lands_on_the_draft_and_after_it_on_the_next_invoice(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    graced = await onboard(client, payment_method_id="pm_card_visa")
    at_once = await onboard(client, payment_method_id="pm_card_visa")
    finalised_now = await onboard(client, payment_method_id="pm_card_visa")
    settings = await call(client, "PUT", f"/v1/customers/{at_once['customer_id']}/invoice-settings",
                          {"invoice_grace_seconds": 0})
    assert (settings.status_code, settings.json()["invoice_grace_seconds"]) == (200, 0), settings.text
    subs = {}
    for customer in (graced, at_once, finalised_now):
        created = await call(client, "POST", "/v1/subscriptions",
                             {"customer_id": customer["customer_id"], "plan_id": "pro"})
        assert created.status_code == 201, created.text
        subs[customer["customer_id"]] = created.json()
    sid = subs[graced["customer_id"]]["subscription_id"]
    sid_at_once = subs[at_once["customer_id"]]["subscription_id"]
    period_end = datetime.fromisoformat(subs[graced["customer_id"]]["current_period_end"])
    assert {datetime.fromisoformat(s["current_period_end"]) for s in subs.values()} == {period_end}

    # 3 units in the period, before its end
    await advance_to(client, period_end - timedelta(hours=1))
    for customer, subscription in ((graced, sid), (at_once, sid_at_once)):
        await ingest(client, customer["customer_id"], 3, period_end - timedelta(hours=2))
        await usage_seen(client, subscription, 3 * UNIT)

    # the period ends: the scheduler closes it; with the grace the invoice is a draft
    await advance_to(client, period_end + timedelta(minutes=30))
    draft = await invoice_of(client, graced["customer_id"], period_end)
    assert (draft["status"], draft["number"], draft["issued_at"]) == ("draft", None, None), draft
    assert datetime.fromisoformat(draft["finalizes_at"]) == period_end + timedelta(seconds=GRACE)
    assert (lines(draft), draft["total_minor"]) == ([("usage", 150), ("credit", -150), ("fee", 900)], 900)
    immediate = await invoice_of(client, at_once["customer_id"], period_end)  # the customer's own grace: 0
    assert immediate["status"] in ("open", "paid") and immediate["finalizes_at"] is None, immediate
    assert immediate["number"] is not None and lines(immediate) == [("usage", 150), ("credit", -150), ("fee", 900)]

    # 2 more units of the period arrive 30 minutes after its end, inside the grace
    for customer, subscription in ((graced, sid), (at_once, sid_at_once)):
        await ingest(client, customer["customer_id"], 2, period_end - timedelta(minutes=10))
        await usage_seen(client, subscription, 2 * UNIT, late=True)

    # the grace ends: the scheduler has the worker finalise the draft with them
    await advance_to(client, period_end + timedelta(seconds=GRACE, minutes=1))
    final = await invoice_of(client, graced["customer_id"], period_end, status="open")
    assert (lines(final), final["total_minor"]) == ([("usage", 250), ("credit", -200), ("fee", 900)], 950)
    assert final["number"] is not None
    assert datetime.fromisoformat(final["issued_at"]) == period_end + timedelta(seconds=GRACE)
    [usage_line] = [line for line in final["lines"] if line["kind"] == "usage"]
    assert int(float(usage_line["quantity"])) == 5 * UNIT

    # POST finalize inside the grace: at once; again: the same invoice
    third = await invoice_of(client, finalised_now["customer_id"], period_end)
    assert third["status"] in ("draft", "open")  # the grace has ended meanwhile in this timeline
    finalize = await call(client, "POST", f"/v1/invoices/{third['invoice_id']}/finalize")
    again = await call(client, "POST", f"/v1/invoices/{third['invoice_id']}/finalize")
    assert (finalize.status_code, again.status_code) == (200, 200), finalize.text
    assert finalize.json()["number"] is not None and again.json()["number"] == finalize.json()["number"]
    unknown = await call(client, "POST", "/v1/invoices/inv_nope/finalize")
    assert (unknown.status_code, unknown.json()["type"]) == (404, "/problems/not-found"), unknown.text

    # 1 more unit of that period after the finalisation: an adjustment on the next invoice
    await ingest(client, graced["customer_id"], 1, period_end - timedelta(minutes=5))
    await usage_seen(client, sid, UNIT, late=True)
    next_end = datetime.fromisoformat((await call(client, "GET", f"/v1/subscriptions/{sid}")).json()
                                      ["current_period_end"])
    await advance_to(client, next_end + timedelta(minutes=1))
    following = await invoice_of(client, graced["customer_id"], next_end)
    assert following["status"] == "draft"
    assert lines(following) == [("adjustment", 50), ("fee", 900)]
    # without a grace (today's behaviour, the defect): the 2 late units were an adjustment on the next
    # invoice, rated after the period's credits expired: 1.00 instead of 0.50 more on the period's invoice
    without = await invoice_of(client, at_once["customer_id"], next_end)
    assert lines(without) == [("adjustment", 100), ("fee", 900)] and without["number"] is not None
    assert real_worker.poll() is None, "the worker exited"


async def test_finalizing_a_draft_before_its_grace_ends_numbers_and_charges_it_at_once(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    customer = await onboard(client, payment_method_id="pm_card_visa")
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": customer["customer_id"],
                                                               "plan_id": "pro"})
    assert created.status_code == 201, created.text
    period_end = datetime.fromisoformat(created.json()["current_period_end"])
    await advance_to(client, period_end + timedelta(minutes=5))
    draft = await invoice_of(client, customer["customer_id"], period_end, status="draft")

    finalize = await call(client, "POST", f"/v1/invoices/{draft['invoice_id']}/finalize")

    assert finalize.status_code == 200, finalize.text
    body = finalize.json()
    assert (body["status"], body["total_minor"]) == ("open", 900) and body["number"] is not None
    assert datetime.fromisoformat(body["issued_at"]) == period_end + timedelta(minutes=5)
