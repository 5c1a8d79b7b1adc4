"""The customer usage portal (issue 19) through the API and the REAL billing worker (a subprocess on the
edge's schema, topics and simulated clock): a signed link opens one customer's page; it shows that
customer's usage, credits, spend and invoices, and nothing of another customer's.

Hand-computed (Pro: USD 9.00 a month in advance, inference USD 0.000001 a micro-USD, USD 2.00 included;
one unit = 500,000 micro-USD = USD 0.50): subscribed 2026-03-10 12:00, the clock moved to 03-13 10:00;
3 units on 03-10 13:00 and 2 on 03-12 09:00 = 2,500,000 micro-USD = USD 2.50: the included USD 2.00 is
used up (USD 0.00 left) and USD 0.50 is charged so far; the daily chart has 4 points (03-10 .. 03-13):
1,500,000 / 0 / 1,000,000 / 0. With a cap of USD 10.00 the page shows spend USD 0.50, 5 % of the cap.
The start invoice (USD 9.00) is listed with its PDF; the other customer's invoice through this link is 404.
"""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from shared.domain.portal_link import sign

from .conftest import ADMIN, advance_to, bearer, call, new_key, onboard, real_worker_settings, until
from .test_draft_invoices import UNIT, ingest, usage_seen

pytestmark = pytest.mark.integration
SECRET = "portal-secret-of-the-portal-test"


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings, portal_secret=SecretStr(SECRET), scheduler_interval_s=0.2)


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


async def test_a_portal_link_shows_its_customer_alone_with_usage_credits_spend_and_invoices(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    alice = await onboard(client, name="Alice Labs", payment_method_id="pm_card_visa")
    bob = await onboard(client, name="Bob Works", payment_method_id="pm_card_visa")
    subs = {}
    for customer in (alice, bob):
        created = await call(client, "POST", "/v1/subscriptions",
                             {"customer_id": customer["customer_id"], "plan_id": "pro"})
        assert created.status_code == 201, created.text
        subs[customer["customer_id"]] = created.json()["subscription_id"]
    start = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    await advance_to(client, datetime(2026, 3, 13, 10, 0, tzinfo=UTC))
    await ingest(client, alice["customer_id"], 3, start + timedelta(hours=1))
    await ingest(client, alice["customer_id"], 2, datetime(2026, 3, 12, 9, 0, tzinfo=UTC))
    await usage_seen(client, subs[alice["customer_id"]], 5 * UNIT)
    cap = await call(client, "PUT", f"/v1/quota/orgs/{alice['customer_id']}/spend-cap", {"amount_minor": 1000})
    assert cap.status_code == 200, cap.text

    async def invoices_of(customer_id: str) -> list[dict[str, object]]:
        async def probe() -> list[dict[str, object]]:
            page = (await call(client, "GET", f"/v1/customers/{customer_id}/invoices")).json()["data"]
            return [i for i in page if i["status"] in ("open", "paid")]
        found: list[dict[str, object]] = await until(probe, f"the start invoice of {customer_id}")
        return found

    [alice_invoice] = await invoices_of(alice["customer_id"])
    [bob_invoice] = await invoices_of(bob["customer_id"])
    assert alice_invoice["total_minor"] == 900

    made = await client.post(f"/v1/customers/{alice['customer_id']}/portal-links", json={"expires_in": 3600},
                             headers=ADMIN)
    assert made.status_code == 201, made.text
    link = made.json()
    assert link["customer_id"] == alice["customer_id"] and link["url"].endswith(f"/portal/{link['token']}")
    expires_at = datetime.fromisoformat(link["expires_at"])
    assert timedelta(minutes=59) < expires_at - datetime.now(UTC) <= timedelta(hours=1)

    page = await client.get(path_of(link["url"]))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    html = page.text
    assert "Alice Labs" in html and "Bob Works" not in html
    assert subs[alice["customer_id"]] in html and subs[bob["customer_id"]] not in html
    inference = re.search(r'<tr data-meter="inference">(.*?)</tr>', html, re.S)
    assert inference is not None
    cells = [c.strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", inference.group(1), re.S)]
    assert cells == ["inference", "2,500,000", "usd_micro", "USD 0.00", "USD 0.50"], cells
    chart = re.search(r'<div class="daily-chart" data-meter="inference">(.*?)</div>', html, re.S)
    assert chart is not None
    points = re.findall(r'<circle class="point"[^>]*data-label="([^"]+)" data-value="([^"]+)"', chart.group(1))
    assert points == [("Mar 10", "1.5e+06"), ("Mar 11", "0"), ("Mar 12", "1e+06"), ("Mar 13", "0")], points
    assert 'id="spend-amount">USD 0.50<' in html and 'id="spend-cap">USD 10.00<' in html
    assert "5% of the cap" in html
    assert f'data-invoice-id="{alice_invoice["invoice_id"]}"' in html
    assert str(bob_invoice["invoice_id"]) not in html

    pdf = await client.get(f"/portal/{link['token']}/invoices/{alice_invoice['invoice_id']}?format=pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    other = await client.get(f"/portal/{link['token']}/invoices/{bob_invoice['invoice_id']}?format=pdf")
    unknown = await client.get(f"/portal/{link['token']}/invoices/inv_nope?format=pdf")
    assert (other.status_code, unknown.status_code) == (404, 404)
    assert other.text.replace(str(bob_invoice["invoice_id"]), "") == unknown.text.replace("inv_nope", "")

    # tampered: Bob's id under Alice's signature; expired: a genuine signature of a past instant
    parts = link["token"].split(".")
    bob_token = sign(bob["customer_id"], expires_at, SECRET.encode()).split(".")
    forged = await client.get(f"/portal/{'.'.join([*bob_token[:3], parts[3]])}")
    assert forged.status_code == 403 and "not valid" in forged.text and "Bob Works" not in forged.text
    stale = sign(alice["customer_id"], datetime.now(UTC) - timedelta(seconds=1), SECRET.encode())
    expired = await client.get(f"/portal/{stale}")
    assert expired.status_code == 410 and "expired" in expired.text and "Alice Labs" not in expired.text
    expired_pdf = await client.get(f"/portal/{stale}/invoices/{alice_invoice['invoice_id']}")
    assert expired_pdf.status_code == 410

    audit = (await call(client, "GET", f"/v1/customers/{alice['customer_id']}/audit")).json()["data"]
    assert [e["action"] for e in audit].count("customer.portal_link") == 1
    assert real_worker.poll() is None, "the worker exited"


async def test_a_portal_link_is_admin_only_bounded_and_for_a_known_customer(client: httpx.AsyncClient) -> None:
    customer = await onboard(client)
    too_long = await client.post(f"/v1/customers/{customer['customer_id']}/portal-links",
                                 json={"expires_in": 31 * 86400}, headers=ADMIN)
    assert too_long.status_code == 422 and too_long.json()["errors"][0]["field"] == "expires_in", too_long.text
    unknown = await client.post("/v1/customers/cus_nope/portal-links", headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found", unknown.text
    read_key = await new_key(client, ["read"], org_id=customer["customer_id"])  # its own org, yet not admin
    refused = await client.post(f"/v1/customers/{customer['customer_id']}/portal-links", headers=bearer(read_key))
    assert refused.status_code == 403, refused.text
    default = await client.post(f"/v1/customers/{customer['customer_id']}/portal-links", headers=ADMIN)
    assert default.status_code == 201, default.text
    lifetime = datetime.fromisoformat(default.json()["expires_at"]) - datetime.now(UTC)
    assert timedelta(hours=23, minutes=59) < lifetime <= timedelta(hours=24)
