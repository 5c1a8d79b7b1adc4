"""Keyset pages of the reads against PostgreSQL: every page of invoices (with their own lines), payment
attempts, the credit ledger, the audit trail and API keys, followed by its cursor to the end."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from shared.adapters.postgres.schema.billing import (
    credit_entries,
    credit_grants,
    invoice_lines,
    invoices,
    payment_attempts,
)

from .conftest import ADMIN, START, bearer, new_key, onboard, subscribe

pytestmark = pytest.mark.integration


async def _all_pages(client: httpx.AsyncClient, path: str, headers: dict[str, str], limit: int) -> list[list[Any]]:
    pages: list[list[Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        pages.append(response.json()["data"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return pages


async def test_invoices_payments_and_the_ledger_are_paged_by_their_ids(client, worker, container):
    customer = await onboard(client)
    cid = customer["customer_id"]
    sid = (await subscribe(client, cid, "pro"))["subscription_id"]
    invoice_ids = sorted(f"in_{uuid.uuid4().hex[:8]}" for _ in range(3))
    attempt_ids = [f"{invoice_ids[0]}_a{n}" for n in (1, 2, 3)]
    entry_ids = [f"ce_{sid}_{n}" for n in (1, 2, 3)]
    # Stand-ins for the worker's rows (the worker owns these tables).
    with container.engine.begin() as conn:
        for n, invoice_id in enumerate(invoice_ids):
            conn.execute(invoices.insert().values(
                invoice_id=invoice_id, subscription_id=sid, customer_id=cid, kind="period_close",
                period_start=START + timedelta(days=31 * n), period_end=START + timedelta(days=31 * (n + 1)),
                status="open", number=f"INV-{n}", currency="USD", subtotal_minor=900 + n, total_minor=900 + n,
                amount_due_minor=900 + n))
            conn.execute(invoice_lines.insert().values(invoice_id=invoice_id, line_no=1, kind="fee",
                                                       description=f"Pro {n}", amount_minor=900 + n, currency="USD"))
        conn.execute(payment_attempts.insert(), [
            {"attempt_id": a, "invoice_id": invoice_ids[0], "attempt_no": n, "subscription_id": sid,
             "customer_id": cid, "amount_minor": 900, "currency": "USD", "idempotency_key": a,
             "requested_at": START} for n, a in enumerate(attempt_ids, start=1)])
        conn.execute(credit_grants.insert().values(
            grant_id=f"cg_{sid}", subscription_id=sid, customer_id=cid, meter_id="inference", source="top_up",
            amount_minor=500, currency="USD", effective_at=START, granted_at=START))
        conn.execute(credit_entries.insert(), [
            {"entry_id": e, "grant_id": f"cg_{sid}", "subscription_id": sid, "kind": kind, "amount_minor": amount,
             "occurred_at": START} for e, kind, amount in zip(entry_ids, ("grant", "consume", "consume"),
                                                              (500, -100, -50), strict=True)])
    reader = bearer(await new_key(client, ["read"], org_id=cid))

    invoice_pages = await _all_pages(client, f"/v1/customers/{cid}/invoices", reader, 2)
    payment_pages = await _all_pages(client, f"/v1/customers/{cid}/payments", reader, 2)
    ledger_pages = await _all_pages(client, f"/v1/subscriptions/{sid}/ledger", reader, 2)

    assert [[i["invoice_id"] for i in page] for page in invoice_pages] == [invoice_ids[:2], invoice_ids[2:]]
    assert [i["lines"][0]["description"] for page in invoice_pages for i in page] == ["Pro 0", "Pro 1", "Pro 2"]
    assert [[p["attempt_id"] for p in page] for page in payment_pages] == [attempt_ids[:2], attempt_ids[2:]]
    assert [[e["entry_id"] for e in page] for page in ledger_pages] == [entry_ids[:2], entry_ids[2:]]
    assert [e["amount_minor"] for page in ledger_pages for e in page] == [500, -100, -50]


async def test_the_audit_trail_and_the_api_keys_are_paged_to_the_end(client, worker):
    customer = await onboard(client)
    await subscribe(client, customer["customer_id"], "pro")
    created = [await new_key(client, ["read"], org_id=customer["customer_id"]) for _ in range(3)]

    audit_pages = await _all_pages(client, f"/v1/customers/{customer['customer_id']}/audit", ADMIN, 1)
    key_pages = await _all_pages(client, "/v1/api-keys", ADMIN, 2)

    assert [[e["action"] for e in page] for page in audit_pages] == [
        ["customer.onboard"], ["subscription.create"], ["api_key.create"], ["api_key.create"], ["api_key.create"]]
    key_ids = [k["key_id"] for page in key_pages for k in page]
    assert key_ids == sorted(key_ids) and all(len(page) <= 2 for page in key_pages)
    assert all("token" not in k and "key_hash" not in k for page in key_pages for k in page)
    assert len([k for page in key_pages for k in page if k["org_id"] == customer["customer_id"]]) == len(created)
