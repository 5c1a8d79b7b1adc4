"""The operator console in a real headless Chromium, on the real edge and the real billing worker.

Data is created through the public API (customers, subscriptions, usage); the console must show it: log in,
find a customer, see the overview's charts with the right number of points, open an invoice's PDF, and void
an invoice through a form with a confirmation step (a worker command) and see its status change.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .conftest import log_in, onboard, subscribe, until

pytestmark = pytest.mark.integration


def test_the_console_needs_an_admin_key_and_keeps_a_session(page, api):
    page.goto("/console/customers")
    assert page.url.endswith("/console/login?next=/console/customers")
    log_in(page, key="not-a-key", then="/console/customers")
    assert page.locator("[role=alert]").inner_text().startswith("That key is unknown")
    org = onboard(api)["customer_id"]
    created = api.post("/v1/api-keys", json={"name": "reader", "scopes": ["read"], "org_id": org})
    assert created.status_code == 201, created.text
    reader = created.json()["token"]
    log_in(page, key=reader, then="/console/customers")
    assert "/console/login" in page.url
    log_in(page, then="/console/customers")
    assert page.url.endswith("/console/customers")
    cookie = next(c for c in page.context.cookies() if c["name"] == "console_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
    assert api.get("/console/customers", headers={"Cookie": "console_session=forged.value"},
                   follow_redirects=False).status_code == 303


def test_an_operator_finds_a_customer_by_email_external_id_or_alias(page, api):
    wanted = onboard(api, name="Findable Ltd", aliases=["findable-alias"])
    onboard(api, name="Someone Else")
    log_in(page, then="/console/customers")
    for query in (wanted["email"].upper(), wanted["external_id"], "findable-alias", wanted["customer_id"]):
        page.fill("input[name=q]", query)
        page.click("form.search button")
        page.wait_for_url("**/console/customers?q=*")
        rows = page.locator("table.customers tbody tr")
        assert rows.count() == 1, query
        assert "Findable Ltd" in rows.first.inner_text()


def test_the_overview_charts_usage_per_day_over_thirty_days(page, api):
    log_in(page)
    chart = page.locator("#usage svg.chart-line")
    assert chart.locator("circle.point").count() == 30
    assert chart.get_attribute("data-points") == "30"


def _open_invoice(api, customer_id: str) -> dict:
    def probe() -> dict | None:
        page_ = api.get(f"/v1/customers/{customer_id}/invoices").json()["data"]
        return next((i for i in page_ if i["status"] == "open"), None)
    return until(probe, f"an open invoice of {customer_id}")


def test_an_operator_opens_an_invoice_pdf_and_voids_the_invoice_through_a_form(page, api, real_worker):
    # a card that declines: the subscription's first invoice (Pro's fee, in advance) stays open
    customer = onboard(api, name="Void Me Inc", payment_method_id="pm_card_chargeDeclined")
    subscribe(api, customer["customer_id"], "pro")
    invoice = _open_invoice(api, customer["customer_id"])

    log_in(page, then=f"/console/customers/{customer['customer_id']}")
    assert "Void Me Inc" in page.locator("h1").inner_text()
    page.locator("table.invoices a", has_text=invoice["number"]).click()
    page.wait_for_url(f"**/console/invoices/{invoice['invoice_id']}")
    expect(page.locator("#invoice-status")).to_have_text("open")

    pdf = page.context.request.get(page.locator("#invoice-pdf").get_attribute("href"))
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.body().startswith(b"%PDF")

    page.click("#void-link")
    page.wait_for_url(f"**/console/invoices/{invoice['invoice_id']}/void")
    expect(page.locator("h1")).to_have_text(f"Void invoice {invoice['number']}?")
    page.fill("input[name=reason]", "sent by mistake")
    page.click("#confirm-form button[type=submit]")
    page.wait_for_url(f"**/console/invoices/{invoice['invoice_id']}?done=voided")
    expect(page.locator("#invoice-status")).to_have_text("void")
    expect(page.locator(".flash")).to_have_text("The invoice was voided.")
    assert api.get(f"/v1/invoices/{invoice['invoice_id']}").json()["status"] == "void"
    audit = api.get(f"/v1/customers/{customer['customer_id']}/audit?limit=100").json()["data"]
    assert any(a["action"] == "invoice.void" and a["actor_key_id"] == "admin-bootstrap" for a in audit)


def test_a_form_without_its_session_csrf_token_is_refused(page, api):
    customer = onboard(api)
    log_in(page)
    response = page.context.request.post(f"/console/customers/{customer['customer_id']}/top-up",
                                         form={"csrf": "forged", "amount": "5", "currency": "USD",
                                               "description": "x"})
    assert response.status == 403 and "csrf_mismatch" in response.text()
    assert api.get(f"/v1/customers/{customer['customer_id']}/balance").json()["balances"] == []
