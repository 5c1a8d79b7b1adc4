"""The operator console in a real headless Chromium, on the real edge and the real billing worker.

Data is created through the public API (customers, subscriptions, usage); the console must show it: log in,
find a customer, see the overview's charts with the right number of points, open an invoice's PDF, and void
an invoice through a form with a confirmation step (a worker command) and see its status change.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from .conftest import START, log_in, onboard, subscribe, until

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
    headers = page.context.request.get("/console/customers").headers
    assert (headers["x-frame-options"], headers["cache-control"]) == ("DENY", "no-store")
    cookie = next(c for c in page.context.cookies() if c["name"] == "console_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
    assert api.get("/console/customers", headers={"Cookie": "console_session=forged.value"},
                   follow_redirects=False).status_code == 303


def test_a_session_ends_with_its_admin_key(page, api):
    created = api.post("/v1/api-keys", json={"name": "operator", "scopes": ["admin"]})
    assert created.status_code == 201, created.text
    log_in(page, key=created.json()["token"], then="/console/customers")
    expect(page.locator("span.who")).to_have_text(created.json()["key_id"])
    assert api.post(f"/v1/api-keys/{created.json()['key_id']}/revoke").status_code == 200
    page.goto("/console/customers")
    assert "/console/login" in page.url


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
    chart = page.locator("#usage svg.chart-line")  # a fragment htmx loads after the page
    expect(chart.locator("circle.point")).to_have_count(30)
    assert chart.get_attribute("data-points") == "30"
    page.goto("/console/overview/usage")  # without htmx: a page of its own
    expect(page.locator("main svg.chart-line circle.point")).to_have_count(30)
    expect(page.locator("nav")).to_be_visible()


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
    listed_pdf = page.locator("table.invoices a.pdf").get_attribute("href")
    assert listed_pdf == f"/console/invoices/{invoice['invoice_id']}/document?format=pdf"
    expect(page.locator("table.payments tbody tr")).to_have_count(1)  # the declined first attempt
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


UNIT = 500_000  # micro-USD of inference per event


def _point_values(chart) -> dict[str, float]:
    points = chart.locator("circle.point")
    return {points.nth(i).get_attribute("data-label"): float(points.nth(i).get_attribute("data-value"))
            for i in range(points.count())}


def test_the_clock_form_then_the_subscription_usage_chart_and_the_overview_revenue(page, api, real_worker):
    """Runs last: it moves the billing clock. Hand-computed: Pro's first invoice is its USD 9.00 fee, paid by
    card; 2, 3 and 1 events of USD 0.50 on March 10, 11 and 12; the period is March 10 12:00 -> April 10
    12:00 (32 UTC days on the chart's axis), and the clock reads March 12 12:00, so the usage chart has a point
    for each of the 3 days so far."""
    customer = onboard(api, name="Usage Co", payment_method_id="pm_card_visa")
    sid = subscribe(api, customer["customer_id"], "pro")["subscription_id"]
    until(lambda: any(i["status"] == "paid" for i in
                      api.get(f"/v1/customers/{customer['customer_id']}/invoices").json()["data"]), "the paid fee")

    log_in(page, then="/console/clock")
    expect(page.locator("#clock-now")).to_have_text("2026-03-10 12:00 UTC")
    page.fill("input[name=days]", "2")
    page.click("form.action button")
    page.wait_for_url("**/console/clock/advance?days=2&hours=0")
    expect(page.locator(".confirm p").first).to_contain_text("From 2026-03-10 12:00 to 2026-03-12 12:00 UTC")
    page.click("#confirm-form button[type=submit]")
    page.wait_for_url("**/console/clock?done=clock_advanced")
    expect(page.locator("#clock-now")).to_have_text("2026-03-12 12:00 UTC")

    events = [(START + timedelta(days=day), n) for day, n in ((0, 2), (1, 3), (2, 1))]
    batch = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": customer["customer_id"],
              "event_type": "inference", "timestamp": at.isoformat(), "properties": {"cost_usd_micros": UNIT}}
             for at, n in events for _ in range(n)]
    assert api.post("/v1/ingest", json=batch).json()["accepted"] == 6
    until(lambda: any(m["meter_id"] == "inference" and int(float(m["quantity"])) == 6 * UNIT
                      for m in api.get(f"/v1/subscriptions/{sid}/usage").json()["meters"]), "the usage")

    page.goto(f"/console/subscriptions/{sid}")
    chart = page.locator("section.usage-chart[data-meter=inference] svg")
    expect(chart.locator("circle.point")).to_have_count(3)  # the days so far: March 10, 11 and 12
    assert _point_values(chart) == {"03-10": 2 * UNIT, "03-11": 3 * UNIT, "03-12": UNIT}
    axis = chart.locator("text.x-label")  # the axis spans the whole period (32 UTC days, 8 of them labelled)
    assert (axis.first.inner_html(), axis.last.inner_html()) == ("03-10", "04-10")

    page.goto("/console/?currency=USD")
    bars = page.locator("#revenue svg rect.bar")
    expect(bars).to_have_count(3)  # one month (2026-03) x invoiced, collected, written off
    assert [(bars.nth(i).get_attribute("data-series"), bars.nth(i).get_attribute("data-value"))
            for i in range(3)] == [("invoiced", "9"), ("collected", "9"), ("written off", "0")]
    expect(page.locator("#usage svg circle.point")).to_have_count(30)  # loaded by htmx after the page
    usage = _point_values(page.locator("#usage svg"))
    days = list(usage)
    assert len(days) == 30 and days[-1] == "03-12"
    assert (usage["03-10"], usage["03-11"], usage["03-12"]) == (2, 3, 1)


def _confirm(page, url: str, fields: dict[str, str], *, select: dict[str, str] | None = None) -> None:
    """Open an action's confirmation page, fill it and confirm."""
    page.goto(url)
    for name, value in fields.items():
        page.fill(f"#confirm-form input[name={name}]", value)
    for name, value in (select or {}).items():
        page.select_option(f"#confirm-form select[name={name}]", value)
    page.click("#confirm-form button[type=submit]")


def test_credit_note_top_up_cancel_and_a_refusal_through_the_forms(page, api, real_worker):
    """Hand-computed: Pro's USD 9.00 fee is paid by card; a USD 2.00 credit note on the paid invoice goes
    entirely to the customer balance (nothing is owed), a USD 5.00 top-up adds to it: USD 7.00. Voiding the
    paid invoice is refused by the same use case as the API (409, code invoice_not_voidable)."""
    customer = onboard(api, name="Forms Co", payment_method_id="pm_card_visa")
    cid = customer["customer_id"]
    sid = subscribe(api, cid, "pro")["subscription_id"]
    paid = until(lambda: next((i for i in api.get(f"/v1/customers/{cid}/invoices").json()["data"]
                               if i["status"] == "paid"), None), "the paid fee")
    log_in(page, then=f"/console/customers/{cid}")

    _confirm(page, f"/console/invoices/{paid['invoice_id']}/credit-note", {"amount": "2.00", "memo": "goodwill"},
             select={"reason": "order_change"})
    page.wait_for_url(f"**/console/invoices/{paid['invoice_id']}?done=credited")
    expect(page.locator("table.credit-notes tbody tr")).to_have_count(1)
    assert "USD 2.00" in page.locator("table.credit-notes tbody tr").inner_text()

    _confirm(page, f"/console/customers/{cid}/top-up", {"amount": "5.00", "currency": "USD"})
    page.wait_for_url(f"**/console/customers/{cid}?done=topped_up")
    expect(page.locator("table.balances tbody tr td").nth(1)).to_have_text("USD 7.00")
    balance = api.get(f"/v1/customers/{cid}/balance").json()["balances"]
    assert [(b["currency"], b["balance_minor"]) for b in balance] == [("USD", 700)]

    _confirm(page, f"/console/subscriptions/{sid}/cancel", {"reason": "moving away"}, select={"when": "period_end"})
    page.wait_for_url(f"**/console/subscriptions/{sid}?done=cancelled")
    expect(page.locator("dl.facts")).to_contain_text("cancels at the period end")
    assert api.get(f"/v1/subscriptions/{sid}").json()["cancel_at_period_end"] is True

    _confirm(page, f"/console/invoices/{paid['invoice_id']}/void", {})
    expect(page.locator("h1")).to_have_text("Invoice not voidable")
    expect(page.locator("code.code")).to_have_text("invoice_not_voidable")
    assert api.get(f"/v1/invoices/{paid['invoice_id']}").json()["status"] == "paid"


def test_written_off_revenue_parked_usage_and_the_lists(page, api, real_worker):
    """Runs after the others (their invoices: Usage Co's and Forms Co's USD 9.00 fees paid, Void Me's voided).
    A third fee, declined then marked uncollectible through the API: the overview shows USD 27.00 invoiced,
    18.00 collected, 9.00 written off in March, nothing open and USD 9.00 uncollectible."""
    never = onboard(api, name="Never Pays", payment_method_id="pm_card_chargeDeclined")
    subscribe(api, never["customer_id"], "pro")
    invoice = _open_invoice(api, never["customer_id"])
    assert api.post(f"/v1/invoices/{invoice['invoice_id']}/mark-uncollectible", json={}).status_code == 200
    parked_tx = f"tx-{uuid.uuid4().hex[:12]}"
    assert api.post("/v1/ingest", json=[{"transaction_id": parked_tx, "customer_id": "not-onboarded-yet",
                                         "event_type": "inference", "timestamp": START.isoformat(),
                                         "properties": {"cost_usd_micros": UNIT}}]).status_code == 200

    log_in(page, then="/console/?currency=USD")
    bars = page.locator("#revenue svg rect.bar")
    assert [(bars.nth(i).get_attribute("data-series"), bars.nth(i).get_attribute("data-value"))
            for i in range(bars.count())] == [("invoiced", "27"), ("collected", "18"), ("written off", "9")]
    expect(page.locator("#open-total")).to_have_text("USD 0.00")
    expect(page.locator("#uncollectible-total")).to_have_text("USD 9.00")

    page.goto("/console/invoices?status=uncollectible&month=2026-03")
    rows = page.locator("table.invoices tbody tr")
    expect(rows).to_have_count(1)
    assert invoice["number"] in rows.first.inner_text()
    page.goto("/console/invoices?status=void")
    expect(page.locator("table.invoices tbody tr")).to_have_count(1)
    page.goto("/console/invoices?month=2026-02")
    expect(page.locator("p.empty")).to_have_text("No invoice matches.")
    for forged in ("Zm9v", "bm90LWEtZGF0ZXxpbl8x"):  # "foo", "not-a-date|in_1"
        assert page.goto(f"/console/invoices?cursor={forged}").status == 422
        expect(page.locator("code.code")).to_have_text("cursor")

    page.goto("/console/parked-usage")
    expect(page.locator("table.parked tbody tr")).to_have_count(1)
    assert parked_tx in page.locator("table.parked tbody tr").inner_text()
    page.goto("/console/dunning")
    expect(page.locator("h1")).to_have_text("Dunning cases")


def test_an_operator_retries_a_declined_payment_with_the_customers_new_card_through_a_form(page, api, real_worker):
    """Pro's USD 9.00 fee is declined by the card on file; the operator retries it with the customer's new card
    (pm_card_visa): attempt 2, paid. The customer page's audit trail shows the retry's details as words.
    Last in the module: its USD 9.00 would add to the March revenue the test above counts."""
    customer = onboard(api, name="Retry Me Ltd", payment_method_id="pm_card_chargeDeclined")
    cid = customer["customer_id"]
    subscribe(api, cid, "pro")
    invoice = _open_invoice(api, cid)
    until(lambda: [a["status"] for a in api.get(f"/v1/customers/{cid}/payments").json()["data"]] == ["declined"],
          "the declined first charge")

    log_in(page, then=f"/console/customers/{cid}")
    page.click("table.invoices a.retry")  # the customer page's invoice row; the invoice page has #retry-link
    page.wait_for_url(f"**/console/invoices/{invoice['invoice_id']}/retry-payment")
    expect(page.locator("h1")).to_have_text(f"Retry the payment of invoice {invoice['number']}?")
    page.fill("#confirm-form input[name=payment_method_id]", "pm_card_visa")
    page.click("#confirm-form button[type=submit]")
    page.wait_for_url(f"**/console/invoices/{invoice['invoice_id']}?done=retried")
    expect(page.locator(".flash")).to_have_text(
        "The payment retry was requested: the charge follows (see the customer's payments).")

    until(lambda: api.get(f"/v1/invoices/{invoice['invoice_id']}").json()["status"] == "paid", "the paid invoice")
    page.goto(f"/console/invoices/{invoice['invoice_id']}")
    expect(page.locator("#invoice-status")).to_have_text("paid")
    expect(page.locator("#retry-link")).to_have_count(0)
    attempts = api.get(f"/v1/customers/{cid}/payments").json()["data"]
    assert sorted((a["attempt_no"], a["status"], a["reason"]) for a in attempts) == [
        (1, "declined", "initial"), (2, "succeeded", "manual")]

    page.goto(f"/console/customers/{cid}")
    expect(page.locator("table.payments tbody tr")).to_have_count(2)
    retry_row = page.locator("table.audit tbody tr", has_text="payment.retry")
    details = retry_row.locator("td").nth(4).inner_text()
    assert f"invoice id {invoice['invoice_id']}" in details and "payment method id pm_card_visa" in details
    assert "{" not in page.locator("table.audit").inner_text()
