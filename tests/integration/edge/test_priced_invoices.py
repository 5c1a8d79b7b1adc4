"""Issue 15, item 2: the tier breakdown of a priced meter read through the API, from what the REAL worker code
stored (periods closed by its handler table on the edge's PostgreSQL schema, with the test catalog
tests/fixtures/catalogs/priced_plans.yaml).

api_graduated_flat: fee 0.00, 500 API calls included each month, graduated 1 - 1,000 at 0.10 + flat 5.00,
1,001 - 5,000 at 0.08 + flat 20.00, above 5,000 at 0.05. January: 1,200 calls. The 500 included are calls
1 - 500, so the close bills calls 501 - 1,000 (500 x 0.10 = 50.00) and the tier's 5.00, calls 1,001 - 1,200
(200 x 0.08 = 16.00) and the tier's 20.00: 91.00, one line per part; February's fee 0.00.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import pytest

from shared.contracts.messages import ClosePeriod, CreateSubscription
from tests.integration.worker.test_billing_pricing_models import PricedBilling

from .conftest import ADMIN

pytestmark = pytest.mark.integration

JAN_1, FEB_1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def billing(engine) -> PricedBilling:  # type: ignore[no-untyped-def]
    return PricedBilling(engine)


async def test_the_invoice_shows_one_line_per_tier_part_and_its_document_prints_them(
        client: httpx.AsyncClient, billing: PricedBilling) -> None:
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    created = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="api_graduated_flat",
                                              currency="USD", payment_method_id="pm_card_visa"), JAN_1)
    assert billing.outcome(created).status == "applied"
    billing.record_usage(sub, cus, "api_call", {"calls": 700}, datetime(2026, 1, 5, tzinfo=UTC))
    billing.record_usage(sub, cus, "api_call", {"calls": 500}, datetime(2026, 1, 25, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    january = billing.invoices(sub)[-1]

    view = await client.get(f"/v1/invoices/{january.invoice_id}", headers=ADMIN)

    assert view.status_code == 200, view.text
    assert [(line["kind"], line["description"], line["quantity"], line["unit_price"], line["amount_minor"])
            for line in view.json()["lines"]] == [
        ("usage", "API calls: 500 requests, tier 1 (1 - 1,000) (500 covered by included credits)", "500", "0.10",
         5000),
        ("usage", "API calls: tier 1 flat fee", "0", None, 500),
        ("usage", "API calls: 200 requests, tier 2 (1,001 - 5,000)", "200", "0.08", 1600),
        ("usage", "API calls: tier 2 flat fee", "0", None, 2000),
        ("fee", "API (graduated, flat fees, 500 included) (2026-02-01 - 2026-03-01)", "1", None, 0),
    ]
    assert view.json()["total_minor"] == 9100
    document = await client.get(f"/v1/invoices/{january.invoice_id}/document", params={"format": "html"},
                                headers=ADMIN)
    assert document.status_code == 200, document.text
    assert "tier 2 (1,001 - 5,000)" in document.text and "tier 2 flat fee" in document.text
