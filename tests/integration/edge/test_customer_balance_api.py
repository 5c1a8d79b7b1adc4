"""The customer credit balance, one-off charges, void and mark-uncollectible (issue 14, H1) through the API and
the REAL billing worker (a subprocess, with its payment executor on the simulated gateway): hand-computed.

Pro: USD 9.00 a month in advance. pm_card_visa pays; pm_card_chargeDeclined is declined (the invoice stays open).
"""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import httpx
import pytest

from .conftest import ADMIN, call, onboard, real_worker_settings, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings)


async def get(client: httpx.AsyncClient, url: str, **params: Any) -> Any:
    response = await client.get(url, params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


async def invoice_in(client: httpx.AsyncClient, invoice_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = await get(client, f"/v1/invoices/{invoice_id}")
        return found if found["status"] == status else None
    return dict(await until(check, f"{status} invoice {invoice_id}"))


async def test_a_manual_credit_then_one_off_charges_fully_and_partly_covered_by_the_balance(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    cid = (await onboard(client, payment_method_id="pm_card_visa"))["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]
    async def held() -> list[tuple[str, int]]:
        found = await get(client, f"/v1/customers/{cid}/balance")
        assert found["customer_id"] == cid
        return [(b["currency"], b["balance_minor"]) for b in found["balances"]]
    # nothing held, nothing drawn: a balance nobody moved has no row (a billing run does not write one per
    # customer), so no currency is listed yet
    assert await held() == []

    key = {"Idempotency-Key": f"adj-{uuid.uuid4().hex}"}
    body = {"currency": "USD", "amount_minor": 2_000, "description": "goodwill"}
    credited = await call(client, "POST", f"/v1/customers/{cid}/balance/adjustments", body, key)
    replayed = await call(client, "POST", f"/v1/customers/{cid}/balance/adjustments", body, key)
    assert credited.status_code == 201, credited.text
    assert (credited.json()["balance"]["balance_minor"], credited.json()["entry"]["kind"]) == (2_000, "adjustment")
    assert replayed.status_code == 201 and replayed.json() == credited.json()
    overdraw = await call(client, "POST", f"/v1/customers/{cid}/balance/adjustments",
                             {"currency": "USD", "amount_minor": -2_001, "description": "too much"})
    assert overdraw.status_code == 409, overdraw.text
    assert (overdraw.json()["type"], overdraw.json()["errors"][0]["reason"]) == (
        "/problems/insufficient-balance", "insufficient_balance")

    # 12.00, all covered by the 20.00 held: paid at finalisation, no attempt
    covered = await call(client, "POST", "/v1/invoices", {"customer_id": cid, "subscription_id": sid, "lines": [
        {"description": "Onboarding", "amount_minor": 1_200}]})
    assert covered.status_code == 201, covered.text
    one = covered.json()
    assert (one["kind"], one["status"], one["total_minor"], one["balance_applied_minor"], one["amount_due_minor"]) == (
        "manual", "paid", 1_200, 1_200, 0)
    # 3 x 5.00 = 15.00: the 8.00 left drawn, 7.00 charged through the simulated gateway by the worker's executor
    partly = await call(client, "POST", "/v1/invoices", {"customer_id": cid, "subscription_id": sid, "lines": [
        {"description": "Training day", "quantity": 3, "unit_amount_minor": 500}]})
    assert partly.status_code == 201, partly.text
    two = partly.json()
    assert (two["status"], two["total_minor"], two["balance_applied_minor"], two["amount_due_minor"]) == (
        "open", 1_500, 800, 700)
    paid = await invoice_in(client, two["invoice_id"], "paid")
    assert paid["amount_paid_minor"] == 700
    payments = (await get(client, f"/v1/customers/{cid}/payments", limit=100))["data"]
    assert [p["amount_minor"] for p in payments if p["invoice_id"] in (one["invoice_id"], two["invoice_id"])] == [700]

    assert await held() == [("USD", 0)]
    page = await get(client, f"/v1/customers/{cid}/balance/entries", limit=2)
    rest = await get(client, f"/v1/customers/{cid}/balance/entries", limit=2, cursor=page["next_cursor"])
    assert [(e["kind"], e["amount_minor"], e["invoice_id"]) for e in page["data"] + rest["data"]] == [
        ("adjustment", 2_000, None), ("invoice_draw", -1_200, one["invoice_id"]),
        ("invoice_draw", -800, two["invoice_id"])]
    assert rest["next_cursor"] is None

    refused = await call(client, "POST", "/v1/invoices", {"customer_id": cid, "subscription_id": sid, "lines": [
        {"description": "Goodwill", "amount_minor": -500}]})
    assert (refused.status_code, refused.json()["type"]) == (422, "/problems/invalid-charge"), refused.text
    unknown = await call(client, "POST", "/v1/invoices", {"customer_id": cid, "subscription_id": "sub_nope",
                                                            "lines": [{"description": "x", "amount_minor": 100}]})
    assert unknown.status_code == 404, unknown.text
    assert (await client.get("/v1/customers/cus_nope/balance", headers=ADMIN)).status_code == 404
    assert real_worker.poll() is None, "the worker exited"


async def test_void_and_mark_uncollectible_through_the_api(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    cid = (await onboard(client, payment_method_id="pm_card_chargeDeclined"))["customer_id"]
    credit = await call(client, "POST", f"/v1/customers/{cid}/balance/adjustments",
                           {"currency": "USD", "amount_minor": 300, "description": "welcome credit"})
    assert credit.status_code == 201, credit.text
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": cid, "plan_id": "pro"})
    sid = created.json()["subscription_id"]
    [first] = (await get(client, f"/v1/customers/{cid}/invoices"))["data"]
    # Pro's 9.00: 3.00 drawn, 6.00 charged and declined: the invoice stays open
    assert (first["status"], first["balance_applied_minor"], first["amount_due_minor"]) == ("open", 300, 600)

    voided = await call(client, "POST", f"/v1/invoices/{first['invoice_id']}/void", {"reason": "mistake"})

    assert voided.status_code == 200, voided.text
    assert (voided.json()["status"], voided.json()["number"]) == ("void", first["number"])
    assert (await get(client, f"/v1/customers/{cid}/balance"))["balances"][0]["balance_minor"] == 300
    entries = (await get(client, f"/v1/customers/{cid}/balance/entries"))["data"]
    assert [(e["kind"], e["amount_minor"]) for e in entries] == [
        ("adjustment", 300), ("invoice_draw", -300), ("void_restore", 300)]
    again = await call(client, "POST", f"/v1/invoices/{first['invoice_id']}/void")
    assert (again.status_code, again.json()["type"]) == (409, "/problems/invoice-not-voidable"), again.text
    not_open = await call(client, "POST", f"/v1/invoices/{first['invoice_id']}/mark-uncollectible")
    assert (not_open.status_code, not_open.json()["type"]) == (409, "/problems/invoice-not-open"), not_open.text
    missing = await call(client, "POST", "/v1/invoices/in_nope/void")
    assert missing.status_code == 404, missing.text

    charge = await call(client, "POST", "/v1/invoices", {"customer_id": cid, "subscription_id": sid, "lines": [
        {"description": "Support hours", "amount_minor": 1_000}]})
    assert charge.status_code == 201, charge.text
    # 10.00: the 3.00 given back is drawn again, 7.00 charged (declined); the number follows the void one's
    assert (charge.json()["balance_applied_minor"], charge.json()["amount_due_minor"]) == (300, 700)
    assert int(charge.json()["number"].rsplit("-", 1)[1]) > int(first["number"].rsplit("-", 1)[1])
    written_off = await call(client, "POST", f"/v1/invoices/{charge.json()['invoice_id']}/mark-uncollectible")
    assert written_off.status_code == 200, written_off.text
    assert written_off.json()["status"] == "uncollectible"
    assert real_worker.poll() is None, "the worker exited"
