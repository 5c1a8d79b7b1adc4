"""The customer usage portal in a real headless Chromium, on the real edge and the real billing worker.

An admin makes a link for one customer through the API; the browser opens it: that customer's name,
usage table, a daily chart with one point per day of the period so far, and its invoices to download.
The same link refuses another customer's invoice id; a tampered link and an expired one are refused
pages with their status (403, 410).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import expect

from shared.domain.portal_link import sign

from .conftest import onboard, subscribe, until

pytestmark = pytest.mark.integration
UNIT = 500_000  # micro-USD: USD 0.50


def _final_invoices(api, customer_id: str) -> list[dict]:
    def probe() -> list[dict]:
        return [i for i in api.get(f"/v1/customers/{customer_id}/invoices").json()["data"]
                if i["status"] in ("open", "paid")]
    return until(probe, f"the start invoice of {customer_id}")


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def test_a_portal_link_shows_one_customers_usage_and_refuses_another_customers_ids(page, api, real_worker):
    mine = onboard(api, name="Portal Owner Ltd", payment_method_id="pm_card_visa")
    other = onboard(api, name="Somebody Else plc", payment_method_id="pm_card_visa")
    subscribe(api, mine["customer_id"], "pro")
    subscribe(api, other["customer_id"], "pro")
    now = datetime.fromisoformat(api.get("/v1/clock").json()["now"])
    moved = api.post("/v1/clock/advance", json={"seconds": 2 * 86400})  # the period's 3rd day
    assert moved.status_code == 200, moved.text
    events = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": mine["customer_id"],
               "event_type": "inference", "timestamp": (now + timedelta(hours=h)).isoformat(),
               "properties": {"cost_usd_micros": UNIT}} for h in (1, 2, 25)]
    assert api.post("/v1/ingest", json=events).json()["accepted"] == 3
    [my_invoice] = _final_invoices(api, mine["customer_id"])
    [their_invoice] = _final_invoices(api, other["customer_id"])
    subscription = api.get(f"/v1/customers/{mine['customer_id']}/subscriptions").json()["data"][0]

    def usage_seen() -> bool:
        usage = api.get(f"/v1/subscriptions/{subscription['subscription_id']}/usage").json()
        return any(m["meter_id"] == "inference" and int(float(m["quantity"])) == 3 * UNIT for m in usage["meters"])
    until(usage_seen, "the worker's materialised usage")

    link = api.post(f"/v1/customers/{mine['customer_id']}/portal-links", json={"expires_in": 900}).json()
    response = page.goto(_path(link["url"]))
    assert response is not None and response.status == 200
    expect(page.locator("h1#customer-name")).to_have_text("Portal Owner Ltd")
    assert "Somebody Else plc" not in page.content()
    expect(page.locator("tr[data-meter=inference] td").nth(1)).to_have_text("1,500,000")
    chart = page.locator(".daily-chart[data-meter=inference] svg.chart-line")
    expect(chart.locator("circle.point")).to_have_count(3)  # 3 days of the period so far
    values = [chart.locator("circle.point").nth(i).get_attribute("data-value") for i in range(3)]
    assert values == ["1e+06", "500000", "0"], values
    rows = page.locator("table.invoices tbody tr")
    expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-invoice-id") == my_invoice["invoice_id"]

    pdf = page.context.request.get(rows.first.locator("a.pdf").get_attribute("href"))
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf" and pdf.body().startswith(b"%PDF")
    refused = page.goto(f"/portal/{link['token']}/invoices/{their_invoice['invoice_id']}?format=pdf")
    assert refused is not None and refused.status == 404
    expect(page.locator("#refusal-title")).to_have_text("No such invoice")
    theirs = page.context.request.get(f"/portal/{link['token']}/invoices/{their_invoice['invoice_id']}?format=html")
    assert theirs.status == 404 and "Somebody Else plc" not in theirs.text()


def test_a_tampered_or_expired_portal_link_is_refused(page, api, edge_settings):
    customer = onboard(api, name="Link Holder GmbH")
    link = api.post(f"/v1/customers/{customer['customer_id']}/portal-links", json={"expires_in": 60}).json()
    version, who, expiry, mac = link["token"].split(".")
    later = ".".join([version, who, str(int(expiry) + 86400), mac])  # a longer life under the same signature
    response = page.goto(f"/portal/{later}")
    assert response is not None and response.status == 403
    expect(page.locator("#refusal-title")).to_have_text("This usage link is not valid")
    assert "Link Holder GmbH" not in page.content()

    secret = edge_settings.portal_secret.get_secret_value().encode()
    expired = sign(customer["customer_id"], datetime.now(UTC) - timedelta(minutes=1), secret)
    response = page.goto(f"/portal/{expired}")
    assert response is not None and response.status == 410
    expect(page.locator("#refusal-title")).to_have_text("This usage link has expired")
    assert "Link Holder GmbH" not in page.content()
