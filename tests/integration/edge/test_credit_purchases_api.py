"""Prepaid credit purchases (issue 15, item 3) through the API and the REAL billing worker (a subprocess) with the
Stripe gateway against stripe-mock.

Hand-computed (Pro: USD 9.00 a month in advance, inference USD 0.000001 a micro-USD with USD 2.00 included; no
tax). stripe-mock declines every off-session confirmation, so an invoice is paid the way a customer pays on
Stripe's hosted page: a signed `payment_intent.succeeded` webhook for its PaymentIntent.
- The first invoice (fee 9.00) is paid. A purchase of 50.00 of inference credit for 45.00 is a MANUAL invoice of
  45.00 ("Prepaid credits"); nothing is granted until it is paid; once paid, 50.00 (top_up, priority 50).
  Credits usable now: 2.00 + 50.00 = 52.00.
- 30.00 of inference in the period (60 x 0.50). The close (10 April): usage 30.00, credit -30.00 (the 2.00
  included first, priority 30, then 28.00 of the purchase, priority 50), next fee 9.00 = 9.00. Left of the
  purchase: 50.00 - 28.00 = 22.00.
- A second purchase (10.00) whose off-session charge is declined grants nothing; voided, it is cancelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from services.ingest.container import Container
from shared.adapters.postgres.schema.billing import payment_attempts
from shared.domain.ids import attempt_id_for

from .conftest import ADMIN, call, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration
UNIT = 500_000  # micro-USD: USD 0.50


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings, payment_gateway="stripe", auto_recharge_refresh_s=0.0)


async def pay_on_stripe(client: httpx.AsyncClient, secret: str, invoice: dict[str, Any]) -> None:
    """The customer pays the invoice's PaymentIntent on Stripe; its webhook reaches the edge."""
    payload = orjson.dumps({"id": f"evt_{uuid.uuid4().hex[:16]}", "type": "payment_intent.succeeded",
                            "created": int(time.time()), "data": {"object": {
                                "id": f"pi_{uuid.uuid4().hex[:14]}", "object": "payment_intent",
                                "amount": invoice["total_minor"], "amount_received": invoice["total_minor"],
                                "currency": "usd", "status": "succeeded",
                                "metadata": {"subscription_id": invoice["subscription_id"],
                                             "invoice_id": invoice["invoice_id"],
                                             "attempt_id": attempt_id_for(invoice["invoice_id"], 1)}}}})
    at = int(time.time())
    signature = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    answer = await client.post("/v1/webhooks/stripe", content=payload, headers={
        "Stripe-Signature": f"t={at},v1={signature}", "content-type": "application/json"})
    assert answer.status_code == 200, answer.text


async def invoice(client: httpx.AsyncClient, invoice_id: str) -> dict[str, Any]:
    return dict((await call(client, "GET", f"/v1/invoices/{invoice_id}")).json())


async def purchase_status(client: httpx.AsyncClient, sid: str, purchase_id: str) -> dict[str, Any]:
    listed = (await call(client, "GET", f"/v1/subscriptions/{sid}/credit-purchases")).json()
    return next(p for p in listed if p["purchase_id"] == purchase_id)


async def test_prepaid_credit_bought_paid_through_stripe_then_drawn_by_usage_at_the_close(
        client: httpx.AsyncClient, container: Container, real_worker: subprocess.Popen[bytes]) -> None:
    secret = container.settings.stripe_webhook_secret.get_secret_value()
    customer = await onboard(client, payment_method_id="pm_card_visa")
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]
    [first] = (await call(client, "GET", f"/v1/customers/{cid}/invoices")).json()["data"]
    await pay_on_stripe(client, secret, first)

    bought = await client.post(f"/v1/subscriptions/{sid}/credit-purchases", headers=ADMIN | {
        "Idempotency-Key": "buy-50"}, json={"meter_id": "inference", "amount_minor": 5000, "price_minor": 4500})
    assert bought.status_code == 201, bought.text
    purchase = bought.json()
    assert (purchase["status"], purchase["amount_minor"], purchase["price_minor"], purchase["origin"]) == (
        "pending", 5000, 4500, "manual")
    sold = await invoice(client, purchase["invoice_id"])
    assert (sold["kind"], sold["status"], sold["total_minor"], [ln["description"] for ln in sold["lines"]]) == (
        "manual", "open", 4500, ["Prepaid credits (inference)"])
    credits = (await call(client, "GET", f"/v1/customers/{cid}/credits")).json()["meters"]
    assert [(m["meter_id"], m["remaining_minor"]) for m in credits if m["currency"]] == [("inference", 200)]

    await pay_on_stripe(client, secret, sold)

    async def granted() -> dict[str, Any] | None:
        found = await purchase_status(client, sid, purchase["purchase_id"])
        return found if found["status"] == "granted" else None
    done = await until(granted, "the purchase granted")
    assert done["grant_id"].endswith(purchase["purchase_id"])
    grants = (await call(client, "GET", f"/v1/subscriptions/{sid}/credit-grants")).json()
    [top_up] = [g for g in grants if g["grant_id"] == purchase["purchase_id"]]
    assert (top_up["source"], top_up["priority"], top_up["granted_minor"], top_up["remaining_minor"]) == (
        "top_up", 50, 5000, 5000)
    credits = (await call(client, "GET", f"/v1/customers/{cid}/credits")).json()["meters"]
    assert [(m["meter_id"], m["remaining_minor"]) for m in credits if m["currency"]] == [("inference", 5200)]

    at = (await call(client, "GET", "/v1/clock")).json()["now"]  # usage of the period, reported now
    batch = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": cid, "event_type": "inference",
              "timestamp": at, "properties": {"cost_usd_micros": UNIT}} for _ in range(60)]
    ingested = await call(client, "POST", "/v1/ingest", batch)
    assert ingested.status_code == 200 and ingested.json()["accepted"] == 60, ingested.text

    async def usage_seen() -> bool:
        body = (await call(client, "GET", f"/v1/subscriptions/{sid}/usage")).json()
        meter = next((m for m in body["meters"] if m["meter_id"] == "inference"), None)
        return meter is not None and int(float(meter["quantity"])) == 60 * UNIT
    await until(usage_seen, "30.00 of inference materialised")

    moved = await call(client, "POST", "/v1/clock/advance", {"seconds": 31 * 86_400 + 60})
    assert moved.status_code == 200, moved.text

    async def closed() -> dict[str, Any] | None:
        page = (await call(client, "GET", f"/v1/customers/{cid}/invoices?limit=100")).json()["data"]
        found = [i for i in page if i["kind"] == "period_close" and i["status"] != "draft"]
        return found[0] if found else None
    close = await until(closed, "the period close's invoice")
    assert sorted((ln["kind"], ln["amount_minor"]) for ln in close["lines"]) == [
        ("credit", -3000), ("fee", 900), ("usage", 3000)]
    assert close["total_minor"] == 900
    grants = (await call(client, "GET", f"/v1/subscriptions/{sid}/credit-grants")).json()
    [top_up] = [g for g in grants if g["grant_id"] == purchase["purchase_id"]]
    assert top_up["remaining_minor"] == 2200  # 50.00 - (30.00 - 2.00 included)

    # A purchase whose charge is declined grants nothing; voiding its invoice cancels it.
    unpaid = await client.post(f"/v1/subscriptions/{sid}/credit-purchases", headers=ADMIN,
                               json={"meter_id": "inference", "amount_minor": 1000})
    assert unpaid.status_code == 201 and unpaid.json()["price_minor"] == 1000, unpaid.text
    unpaid_invoice = unpaid.json()["invoice_id"]

    async def declined() -> bool:
        with container.engine.connect() as conn:
            status = conn.execute(sa.select(payment_attempts.c.status).where(
                payment_attempts.c.invoice_id == unpaid_invoice)).scalar()
        return bool(status == "declined")
    await until(declined, "the declined charge of the second purchase")
    assert (await purchase_status(client, sid, unpaid.json()["purchase_id"]))["status"] == "pending"
    voided = await call(client, "POST", f"/v1/invoices/{unpaid_invoice}/void")
    assert voided.status_code == 200, voided.text
    cancelled = await purchase_status(client, sid, unpaid.json()["purchase_id"])
    assert (cancelled["status"], cancelled["grant_id"]) == ("cancelled", None)
    grants = (await call(client, "GET", f"/v1/subscriptions/{sid}/credit-grants")).json()
    assert unpaid.json()["purchase_id"] not in {g["grant_id"] for g in grants}

    refused = await client.post(f"/v1/subscriptions/{sid}/credit-purchases", headers=ADMIN,
                                json={"meter_id": "storage", "amount_minor": 100})
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_credit_grant", refused.text
    assert real_worker.poll() is None, "the worker exited"


async def test_auto_recharge_fires_once_per_crossing_under_concurrent_usage_batches(
        client: httpx.AsyncClient, container: Container, real_worker: subprocess.Popen[bytes]) -> None:
    """Threshold 1.00, target 10.00 on inference (Pro includes 2.00). Two units (1.00) leave exactly 1.00: not
    below, nothing bought. Then 4 concurrent batches of one unit (0.50 each): the credit left crosses 1.00 and
    ends at -1.00 (2.00 - 3.00; the close bills the rest as overage). ONE recharge is bought, for
    10.00 - (what was left when the worker decided): 0.50, 0.00, -0.50 or -1.00 left -> 9.50 .. 11.00."""
    customer = await onboard(client, payment_method_id="pm_card_visa")
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]
    url = f"/v1/subscriptions/{sid}/auto-recharge"

    bad = [({"meter_id": "storage", "threshold_minor": 100, "target_minor": 1000}, "amount_minor"),
           ({"meter_id": "inference", "threshold_minor": 1000, "target_minor": 1000}, "target_minor")]
    for body, field in bad:
        refused = await client.put(url, json=body, headers=ADMIN)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_credit_grant", refused.text
        assert refused.json()["errors"][0]["field"] == field, refused.text
    stored = await client.put(url, json={"meter_id": "inference", "threshold_minor": 100, "target_minor": 1000},
                              headers=ADMIN)
    assert stored.status_code == 200, stored.text
    assert (stored.json()["currency"], stored.json()["enabled"]) == ("USD", True)
    assert [s["target_minor"] for s in (await call(client, "GET", url)).json()] == [1000]

    async def ingest(units: int) -> None:
        at = (await call(client, "GET", "/v1/clock")).json()["now"]
        batch = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": cid, "event_type": "inference",
                  "timestamp": at, "properties": {"cost_usd_micros": UNIT}} for _ in range(units)]
        answer = await call(client, "POST", "/v1/ingest", batch)
        assert answer.status_code == 200 and answer.json()["accepted"] == units, answer.text

    async def materialised(units: int) -> bool:
        body = (await call(client, "GET", f"/v1/subscriptions/{sid}/usage")).json()
        meter = next((m for m in body["meters"] if m["meter_id"] == "inference"), None)
        return meter is not None and int(float(meter["quantity"])) == units * UNIT

    async def recharges() -> list[dict[str, Any]]:
        listed = (await call(client, "GET", f"/v1/subscriptions/{sid}/credit-purchases")).json()
        return [p for p in listed if p["origin"] == "auto_recharge"]

    await ingest(2)
    await until(lambda: materialised(2), "1.00 of usage")
    await asyncio.sleep(2)  # time for a (wrong) recharge to show
    assert await recharges() == []  # 1.00 left is not below 1.00

    await asyncio.gather(*(ingest(1) for _ in range(4)))
    await until(lambda: materialised(6), "3.00 of usage")
    [bought] = await until(recharges, "the recharge")
    await asyncio.sleep(2)  # time for a second (wrong) one to show
    assert len(await recharges()) == 1
    assert bought["status"] == "pending" and bought["amount_minor"] in (950, 1000, 1050, 1100), bought
    assert bought["price_minor"] == bought["amount_minor"]
    sold = await invoice(client, bought["invoice_id"])
    assert (sold["kind"], sold["total_minor"]) == ("manual", bought["amount_minor"])

    # More usage while it is pending buys nothing more; paid, it is granted.
    await ingest(1)
    await until(lambda: materialised(7), "3.50 of usage")
    await pay_on_stripe(client, container.settings.stripe_webhook_secret.get_secret_value(), sold)

    async def granted() -> bool:
        return [p["status"] for p in await recharges()] == ["granted"]
    await until(granted, "the recharge granted")
    assert len(await recharges()) == 1
    assert real_worker.poll() is None, "the worker exited"
