"""Credit notes (issue 14, item 3) through the API and the REAL billing worker (a subprocess) with the Stripe
gateway against stripe-mock: a partial credit note refunded through Stripe, another credited to the customer
balance that the next invoice draws, per-line and refund limits, CN numbers across batches, the document.

Pro: USD 9.00 a month in advance; the customer pays 10 % tax, so the first invoice is fee 9.00 (line 1) + tax
0.90 (line 2) = 9.90. stripe-mock declines every off-session confirmation, so the invoice is paid the way a
customer pays on Stripe's hosted page: a signed `payment_intent.succeeded` webhook for the invoice's
PaymentIntent.
"""

from __future__ import annotations

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

from shared.adapters.postgres.schema.billing import customer_balance_entries, customer_balances, invoices
from shared.domain.ids import attempt_id_for

from .conftest import ADMIN, call, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings, payment_gateway="stripe")


async def invoices_of(client: httpx.AsyncClient, customer_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/customers/{customer_id}/invoices", params={"limit": 100}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def pay_on_stripe(client: httpx.AsyncClient, secret: str, invoice: dict[str, Any]) -> None:
    """The customer pays the invoice's PaymentIntent on Stripe; its webhook reaches the edge."""
    intent = f"pi_{uuid.uuid4().hex[:14]}"
    payload = orjson.dumps({"id": f"evt_{uuid.uuid4().hex[:16]}", "type": "payment_intent.succeeded",
                            "created": int(time.time()), "data": {"object": {
                                "id": intent, "object": "payment_intent", "amount": invoice["total_minor"],
                                "amount_received": invoice["total_minor"], "currency": "usd", "status": "succeeded",
                                "metadata": {"subscription_id": invoice["subscription_id"],
                                             "invoice_id": invoice["invoice_id"],
                                             "attempt_id": attempt_id_for(invoice["invoice_id"], 1)}}}})
    at = int(time.time())
    signature = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    answer = await client.post("/v1/webhooks/stripe", content=payload, headers={
        "Stripe-Signature": f"t={at},v1={signature}", "content-type": "application/json"})
    assert answer.status_code == 200, answer.text


async def test_a_partial_credit_note_is_refunded_through_stripe_and_another_is_drawn_by_the_next_invoice(
        client: httpx.AsyncClient, container, real_worker: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    customer = await onboard(client, payment_method_id="pm_card_visa", tax_rate_bps=1000)
    cid = customer["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    assert created.status_code == 201, created.text
    [first] = await invoices_of(client, cid)
    assert (first["total_minor"], [line["amount_minor"] for line in first["lines"]]) == (990, [900, 90])
    await pay_on_stripe(client, container.settings.stripe_webhook_secret.get_secret_value(), first)

    async def paid() -> dict[str, Any] | None:
        found = (await client.get(f"/v1/invoices/{first['invoice_id']}", headers=ADMIN)).json()
        return found if found["status"] == "paid" else None
    paid_invoice = await until(paid, "paid invoice")
    assert paid_invoice["amount_paid_minor"] == 990
    url = f"/v1/invoices/{first['invoice_id']}/credit-notes"

    # 3.00 of the fee, tax 0.90 * 3.00 / 9.00 = 0.30: 3.30, all refunded through Stripe
    refunded = await call(client, "POST", url, {"lines": [{"line_no": 1, "amount_minor": 300}],
                                                   "reason": "product_unsatisfactory", "refund_minor": 330})
    assert refunded.status_code == 201, refunded.text
    note = refunded.json()
    assert (note["number"], note["subtotal_minor"], note["tax_minor"], note["total_minor"], note["refunded_minor"],
            note["credited_minor"], note["reduced_minor"]) == ("CN-000001", 300, 30, 330, 330, 0, 0)

    async def refund_settled() -> dict[str, Any] | None:
        found = (await client.get(f"/v1/credit-notes/{note['credit_note_id']}", headers=ADMIN)).json()
        return found if found["refund_status"] not in ("pending", "in_flight") else None
    settled = await until(refund_settled, "refund outcome")
    assert settled["refund_status"] == "succeeded" and settled["refund_ref"].startswith("re_"), settled

    # 2.20 on the whole invoice (tax 0.90 * 2.20 / 9.90 = 0.20), a paid invoice: to the customer balance
    credited = await call(client, "POST", url, {"amount_minor": 220, "reason": "order_change", "memo": "goodwill"})
    assert credited.status_code == 201, credited.text
    assert (credited.json()["number"], credited.json()["tax_minor"], credited.json()["credited_minor"]) == (
        "CN-000002", 20, 220)

    too_much = await call(client, "POST", url, {"amount_minor": 100, "reason": "duplicate", "refund_minor": 661})
    past_line = await call(client, "POST", url, {"lines": [{"line_no": 1, "amount_minor": 601}],
                                                    "reason": "duplicate"})
    tax_line = await call(client, "POST", url, {"lines": [{"line_no": 2, "amount_minor": 1}],
                                                   "reason": "duplicate"})
    past_total = await call(client, "POST", url, {"amount_minor": 441, "reason": "duplicate"})
    assert [(r.status_code, r.json()["type"]) for r in (too_much, past_line, tax_line, past_total)] == [
        (409, "/problems/rejected/refund_exceeds_paid"), (409, "/problems/rejected/credit_exceeds_line"),
        (409, "/problems/rejected/unknown_line"), (409, "/problems/rejected/credit_exceeds_invoice")]

    listed = (await client.get(url, headers=ADMIN)).json()["data"]
    by_customer = (await client.get(f"/v1/customers/{cid}/credit-notes", headers=ADMIN)).json()["data"]
    assert [n["number"] for n in listed] == ["CN-000001", "CN-000002"]
    assert sorted(n["number"] for n in by_customer) == ["CN-000001", "CN-000002"]
    html = await client.get(f"/v1/credit-notes/{note['credit_note_id']}/document?format=html", headers=ADMIN)
    pdf = await client.get(f"/v1/credit-notes/{note['credit_note_id']}/document", headers=ADMIN)
    assert html.status_code == 200 and "Credit note" in html.text and "CN-000001" in html.text
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")

    # The period closes on 10 April: fee 9.00 + tax 0.90 = 9.90, of which the balance's 2.20 is drawn: 7.70 due
    moved = await client.post("/v1/clock/advance", json={"seconds": 31 * 86_400 + 60}, headers=ADMIN)
    assert moved.status_code == 200, moved.text

    async def second_invoice() -> dict[str, Any] | None:
        # NOTE: invoices are listed by id (a hash), not by date: find the close by its kind
        found = [i for i in await invoices_of(client, cid) if i["kind"] == "period_close"]
        return found[0] if found and found[0]["status"] != "draft" else None
    closing = await until(second_invoice, "period close invoice")
    with container.engine.connect() as conn:
        row = conn.execute(sa.select(invoices.c.total_minor, invoices.c.balance_applied_minor,
                                     invoices.c.amount_due_minor).where(
            invoices.c.invoice_id == closing["invoice_id"])).one()
        entries = conn.execute(sa.select(customer_balance_entries.c.kind, customer_balance_entries.c.amount_minor)
                               .where(customer_balance_entries.c.customer_id == cid)
                               .order_by(customer_balance_entries.c.seq)).all()
        balance = conn.execute(sa.select(customer_balances.c.balance_minor).where(
            customer_balances.c.customer_id == cid)).scalar_one()
    assert tuple(row) == (990, 220, 770)
    assert [tuple(e) for e in entries] == [("credit_note", 220), ("invoice_draw", -220)]
    assert balance == 0
    assert real_worker.poll() is None, "the worker exited"


async def test_the_edge_refuses_what_it_can_know_before_sending_anything(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/v1/invoices/in_nope/credit-notes", json={"amount_minor": 1, "reason": "duplicate"},
                                headers=ADMIN)
    both = await client.post("/v1/invoices/in_nope/credit-notes", headers=ADMIN, json={
        "amount_minor": 1, "lines": [{"line_no": 1, "amount_minor": 1}], "reason": "duplicate"})
    neither = await client.post("/v1/invoices/in_nope/credit-notes", json={"reason": "duplicate"}, headers=ADMIN)
    bad_reason = await client.post("/v1/invoices/in_nope/credit-notes", json={"amount_minor": 1, "reason": "oops"},
                                   headers=ADMIN)
    listed = await client.get("/v1/invoices/in_nope/credit-notes", headers=ADMIN)
    note = await client.get("/v1/credit-notes/cn_nope", headers=ADMIN)
    document = await client.get("/v1/credit-notes/cn_nope/document", headers=ADMIN)
    assert (unknown.status_code, unknown.json()["type"]) == (404, "/problems/not-found")
    assert [r.status_code for r in (both, neither, bad_reason)] == [422, 422, 422]
    assert [r.status_code for r in (listed, note, document)] == [404, 404, 404]
