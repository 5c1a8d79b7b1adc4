"""Metronome's invoice calls through the official SDK and the REAL worker, hand-computed.

Plan `inv_<tag>`: USD 20.00 a month in advance, 0.05 per call of a COUNT billable metric. The customer is made
through the SDK and subscribed natively at T0: the start invoice bills the first month's fee, 2000 cents. Ten
calls in the first month; past its end the close bills them, 10 x 5 = 50 cents, with the second month's fee:
2050 cents. Both read the same through the SDK (cents) and the native API (minor units). A second customer's
declined start invoice is voided through `invoices.void`; voiding it again, or the paid close, is the SDK's
ConflictError."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import metronome
import pytest

from .conftest import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def billed(edge_url: str, real_worker: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    with metronome.Metronome(bearer_token="test-admin-key", base_url=f"{edge_url}/metronome",
                             max_retries=0) as client, \
            httpx.Client(base_url=edge_url, headers={"Authorization": "Bearer test-admin-key"}, timeout=90) as native:
        calls = client.v1.billable_metrics.create(
            name="Calls", aggregation_type="COUNT", event_type_filter={"in_values": [f"inv_call_{tag}"]}).data.id
        plan = native.post("/v1/plans", json={
            "id": f"inv_{tag}", "name": "Invoiced", "family": "inv", "interval": "month", "currency": "USD",
            "price": "20.00", "meters": {calls: {"unit_price": "0.05", "overage": "bill"}}})
        assert plan.status_code == 201, plan.text
        customer = client.v1.customers.create(name="Invoiced Org", external_id=f"inv-org-{tag}").data.id
        subscribed = native.post("/v1/subscriptions", json={"customer_id": customer, "plan_id": f"inv_{tag}",
                                                                  "payment_method_id": "pm_card_visa"})
        assert subscribed.status_code == 201, subscribed.text
        start = datetime.fromisoformat(subscribed.json()["current_period_start"])
        end = datetime.fromisoformat(subscribed.json()["current_period_end"])
        moved = native.post("/v1/clock/advance", json={"seconds": 3600})
        assert moved.status_code == 200, moved.text
        client.v1.usage.ingest(usage=[{"transaction_id": f"tx-{uuid.uuid4().hex}", "customer_id": f"inv-org-{tag}",
                                       "event_type": f"inv_call_{tag}", "timestamp": (start + timedelta(minutes=30))
                                       .isoformat(), "properties": {}} for _ in range(10)])

        def materialised() -> bool:
            rows = client.v1.usage.list(starting_on=start.replace(hour=0, minute=0, second=0, microsecond=0),
                                        ending_before=start.replace(hour=0, minute=0, second=0, microsecond=0)
                                        + timedelta(days=1), window_size="NONE", customer_ids=[customer],
                                        billable_metrics=[{"id": calls}]).data
            return bool(rows) and rows[0].value == 10
        eventually(materialised, "the 10 calls materialised")
        now = datetime.fromisoformat(native.get("/v1/clock").json()["now"])
        moved = native.post("/v1/clock/advance", json={"seconds": int((end - now).total_seconds()) + 60})
        assert moved.status_code == 200, moved.text

        def closed() -> list[dict[str, Any]] | None:
            found = native.get(f"/v1/customers/{customer}/invoices").json()["data"]
            return found if len(found) == 2 and all(i["status"] == "paid" for i in found) else None
        invoices = eventually(closed, "the start invoice and the period close")
    by_kind = {i["kind"]: i for i in invoices}
    return {"customer": customer, "calls": calls, "plan": f"inv_{tag}", "start": start, "end": end,
            "start_invoice": by_kind["subscription_start"], "close": by_kind["period_close"]}


def test_the_invoices_list_in_metronomes_shape_in_cents_across_pages(metronome_client: metronome.Metronome,
                                                                     billed: dict[str, Any]) -> None:
    first = metronome_client.v1.customers.invoices.list(customer_id=billed["customer"], limit=1)
    assert len(first.data) == 1 and first.next_page
    listed = list(metronome_client.v1.customers.invoices.list(customer_id=billed["customer"], limit=1))
    assert {(i.id, i.total) for i in listed} == {(billed["start_invoice"]["invoice_id"], 2000),
                                                  (billed["close"]["invoice_id"], 2050)}
    assert {(i.customer_id, i.status, i.type, i.credit_type.name) for i in listed} == {
        (billed["customer"], "FINALIZED", "USAGE", "USD (cents)")}
    assert billed["start_invoice"]["status"] == "paid"  # charged: FINALIZED, and PAID at the provider
    [start] = [i for i in listed if i.id == billed["start_invoice"]["invoice_id"]]
    assert start.external_invoice is not None and start.external_invoice.external_status == "PAID"


def test_the_close_reads_line_by_line_as_the_native_invoice_to_the_cent(metronome_client: metronome.Metronome,
                                                                         billed: dict[str, Any]) -> None:
    native = billed["close"]
    invoice = metronome_client.v1.customers.invoices.retrieve(customer_id=billed["customer"],
                                                              invoice_id=native["invoice_id"]).data
    assert (invoice.total, invoice.subtotal) == (2050, 2050) == (native["total_minor"], native["subtotal_minor"])
    assert (invoice.start_timestamp, invoice.end_timestamp) == (billed["start"], billed["end"])
    assert invoice.credit_type.id == "2714e483-4ff1-48e4-9e25-ac732e8f24f2"
    usage = [li for li in invoice.line_items if li.type == "usage"]
    fees = [li for li in invoice.line_items if li.type == "subscription"]
    assert [(li.quantity, li.unit_price, li.total, li.product_id) for li in usage] == [(10, 5, 50, billed["calls"])]
    assert [(li.total, li.product_id) for li in fees] == [(2000, billed["plan"])]
    assert [li.total for li in invoice.line_items] == [line["amount_minor"] for line in native["lines"]]
    assert invoice.external_invoice is not None and invoice.external_invoice.billing_provider_type == "stripe"


def test_void_goes_through_the_worker_and_a_paid_or_void_invoice_is_a_conflict(
        metronome_client: metronome.Metronome, native: httpx.Client, billed: dict[str, Any]) -> None:
    customer = metronome_client.v1.customers.create(name="Declined", external_id=f"dec-{uuid.uuid4().hex[:8]}").data.id
    subscribed = native.post("/v1/subscriptions", json={"customer_id": customer, "plan_id": billed["plan"],
                                                        "payment_method_id": "pm_card_chargeDeclined"})
    assert subscribed.status_code == 201, subscribed.text

    def unpaid() -> str | None:
        found = native.get(f"/v1/customers/{customer}/invoices").json()["data"]
        return found[0]["invoice_id"] if found and found[0]["status"] == "open" else None
    invoice_id = eventually(unpaid, "the declined start invoice")
    voided = metronome_client.v1.invoices.void(id=invoice_id)
    assert voided.data is not None and voided.data.id == invoice_id
    again = metronome_client.v1.customers.invoices.retrieve(customer_id=customer, invoice_id=invoice_id).data
    assert (again.status, again.total) == ("VOID", 2000)
    assert again.external_invoice is not None and again.external_invoice.external_status == "VOID"
    assert [i.id for i in metronome_client.v1.customers.invoices.list(customer_id=customer, status="VOID")] == [
        invoice_id]
    for refused in (invoice_id, billed["close"]["invoice_id"]):  # void, paid
        with pytest.raises(metronome.ConflictError) as caught:
            metronome_client.v1.invoices.void(id=refused)
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "invoice_not_voidable"


def test_an_invoice_of_another_customer_is_the_sdks_not_found_error(metronome_client: metronome.Metronome,
                                                                    billed: dict[str, Any]) -> None:
    other = metronome_client.v1.customers.create(name="Other", external_id=f"other-{uuid.uuid4().hex[:8]}").data.id
    with pytest.raises(metronome.NotFoundError) as caught:
        metronome_client.v1.customers.invoices.retrieve(customer_id=other, invoice_id=billed["close"]["invoice_id"])
    assert isinstance(caught.value.body, dict) and caught.value.body["errors"][0]["field"] == "invoice_id"
