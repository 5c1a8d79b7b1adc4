"""Invoice line -> the usage events it billed (issue 14, item 7), read through the API from what the REAL
worker code stored: usage materialised by the worker's `UsageMaterializer` and periods closed by its handler
table on the edge's PostgreSQL schema.

Pro bills inference in micro-USD (a summing meter). Hand-computed: January has 3 events (1,000,000 and
1,500,000 in the 10:00 hour of 5 January, 500,000 on 20 January) = 3,000,000, billed by the close of
1 February as its usage line. A late event of 250,000 at 10:50 on 5 January (the SAME hour bucket as two
billed events) arrives after that close, with 400,000 of February usage: the close of 1 March bills
February's 400,000 as its usage line and the late 250,000 as an adjustment line.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import invoice_lines
from shared.contracts.messages import ClosePeriod, CreateSubscription
from tests.integration.worker.billing_support import Billing

from .conftest import ADMIN

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def billing(engine) -> Billing:  # type: ignore[no-untyped-def]
    return Billing(engine)


def _line(billing: Billing, invoice_id: str, kind: str) -> Any:
    with billing.engine.connect() as conn:
        return conn.execute(sa.select(invoice_lines).where(invoice_lines.c.invoice_id == invoice_id,
                                                           invoice_lines.c.kind == kind)).one()


async def _all_pages(client: httpx.AsyncClient, url: str, limit: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = await client.get(url, params=params, headers=ADMIN)
        assert page.status_code == 200, page.text
        found.extend(page.json()["data"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return found


async def test_usage_and_late_adjustment_lines_list_the_events_they_billed(
        client: httpx.AsyncClient, billing: Billing) -> None:
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    created = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                              payment_method_id="pm_card_visa"), JAN_1)
    assert billing.outcome(created).status == "applied"
    inference = "inference"
    billing.record_usage(sub, cus, inference, {"cost_usd_micros": 1_000_000}, datetime(2026, 1, 5, 10, 15, tzinfo=UTC))
    billing.record_usage(sub, cus, inference, {"cost_usd_micros": 1_500_000}, datetime(2026, 1, 5, 10, 40, tzinfo=UTC))
    billing.record_usage(sub, cus, inference, {"cost_usd_micros": 500_000}, datetime(2026, 1, 20, 8, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    billing.record_usage(sub, cus, inference, {"cost_usd_micros": 250_000}, datetime(2026, 1, 5, 10, 50, tzinfo=UTC))
    billing.record_usage(sub, cus, inference, {"cost_usd_micros": 400_000}, datetime(2026, 2, 10, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=MAR_1), MAR_1)

    _start, january, february = billing.invoices(sub)
    usage_jan = _line(billing, january.invoice_id, "usage")
    assert usage_jan.quantity == Decimal(3_000_000)
    url = f"/v1/invoices/{january.invoice_id}/lines/{usage_jan.line_no}/events"
    events = await _all_pages(client, url, limit=2)  # 2 pages
    assert [(e["occurred_at"], Decimal(e["quantity"])) for e in events] == [
        ("2026-01-05T10:15:00Z", 1_000_000), ("2026-01-05T10:40:00Z", 1_500_000), ("2026-01-20T08:00:00Z", 500_000)]
    assert sum(Decimal(e["quantity"]) for e in events) == usage_jan.quantity
    assert {e["meter_id"] for e in events} == {"inference"} and {e["customer_id"] for e in events} == {cus}

    usage_feb = _line(billing, february.invoice_id, "usage")
    late = _line(billing, february.invoice_id, "adjustment")
    assert (usage_feb.quantity, late.quantity, late.meter_id) == (Decimal(400_000), Decimal(250_000), "inference")
    feb_events = await _all_pages(client, f"/v1/invoices/{february.invoice_id}/lines/{usage_feb.line_no}/events", 50)
    assert [(e["occurred_at"], Decimal(e["quantity"])) for e in feb_events] == [("2026-02-10T00:00:00Z", 400_000)]
    late_url = f"/v1/invoices/{february.invoice_id}/lines/{late.line_no}/events"
    late_events = await _all_pages(client, late_url, 50)
    assert [(e["occurred_at"], Decimal(e["quantity"])) for e in late_events] == [("2026-01-05T10:50:00Z", 250_000)]

    as_csv = await client.get(url, params={"format": "csv"}, headers=ADMIN)
    by_accept = await client.get(url, headers={**ADMIN, "Accept": "text/csv"})
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv"), as_csv.text
    assert by_accept.text == as_csv.text
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == ["transaction_id", "customer_id", "event_type", "meter_id", "quantity", "occurred_at",
                       "received_at", "ingested_at"]
    assert [(r[0], Decimal(r[4])) for r in rows[1:]] == [(e["transaction_id"], Decimal(e["quantity"]))
                                                         for e in events]
    late_csv = await client.get(late_url, params={"format": "csv"}, headers=ADMIN)
    assert [r[0] for r in list(csv.reader(io.StringIO(late_csv.text)))[1:]] == [late_events[0]["transaction_id"]]


async def test_lines_without_events_and_unknown_lines_are_refused(client: httpx.AsyncClient,
                                                                  billing: Billing) -> None:
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                    payment_method_id="pm_card_visa"), JAN_1)
    [start] = billing.invoices(sub)
    fee = _line(billing, start.invoice_id, "fee")

    not_usage = await client.get(f"/v1/invoices/{start.invoice_id}/lines/{fee.line_no}/events", headers=ADMIN)
    no_line = await client.get(f"/v1/invoices/{start.invoice_id}/lines/99/events", headers=ADMIN)
    no_invoice = await client.get("/v1/invoices/inv_nope/lines/1/events", headers=ADMIN)

    assert (not_usage.status_code, not_usage.json()["type"]) == (409, "/problems/line-not-traceable"), not_usage.text
    assert (no_line.status_code, no_invoice.status_code) == (404, 404)


async def test_a_period_close_is_labelled_with_its_billing_period_and_the_span_its_lines_cover(
        client: httpx.AsyncClient, billing: Billing) -> None:
    """Issue 14, item 8: the close of January bills January's usage and February's fee in advance; before, the
    invoice only said period January, as if the fee were January's."""
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                    payment_method_id="pm_card_visa"), JAN_1)
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 3_000_000}, datetime(2026, 1, 5, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    _start, january = billing.invoices(sub)

    view = (await client.get(f"/v1/invoices/{january.invoice_id}", headers=ADMIN)).json()

    assert view["billing_period"] == {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}
    assert view["covers"] == {"start": "2026-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z"}
    assert [(line["kind"], line["period_start"], line["period_end"]) for line in view["lines"]] == [
        ("usage", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
        ("credit", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
        ("fee", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z")]
    document = await client.get(f"/v1/invoices/{january.invoice_id}/document", params={"format": "html"},
                                headers=ADMIN)
    assert document.status_code == 200, document.text
    assert "Lines cover 01 Jan 2026 – 01 Mar 2026" in document.text
