"""The operator console in a real headless Chromium, on the real edge and the real billing worker.

Data is created through the public API (customers, subscriptions, usage); the console must show it: log in,
find a customer, see the overview's charts with the right number of points, open an invoice's PDF, and void
an invoice through a form with a confirmation step (a worker command) and see its status change.
"""

from __future__ import annotations

import pytest

from .conftest import log_in, onboard

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
