"""The upcoming invoice prices late usage of a TIERED meter as the worker's close does (issue 15): through the
API and the REAL billing worker (a subprocess) on a simulated clock, the preview equals the issued close.

Hand-computed: plan late_tiered (created through the catalog API), USD 10.00 a month in advance, calls priced
graduated: 1 - 10 at 1.00, above 10 at 0.50. Period 1: 8 calls -> its close bills 8 x 1.00 = 8.00. Then 4
calls of period 1 arrive late: after its 8 billed calls they are calls 9 - 12, 2 x 1.00 + 2 x 0.50 = 3.00
(not 4 x 1.00 = 4.00, the price from the first tier). Period 2: 3 calls = 3.00. The second close: usage
3.00, late adjustments 2.00 + 1.00, the next fee 10.00 = 16.00 (no tax), and the upcoming invoice showed it
line by line.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from .conftest import ADMIN, call, onboard, real_worker_settings, until
from .test_previews import amounts, assert_issued_as_previewed, invoices

pytestmark = pytest.mark.integration

METER = {"id": "late_calls", "name": "Late calls", "unit": "call", "event_type": "late_call",
         "aggregation": "count"}
PLAN = {"id": "late_tiered", "name": "Late tiered", "family": "late", "interval": "month", "currency": "USD",
        "price": "10.00", "meters": {"late_calls": {"overage": "bill", "pricing": {"model": "graduated", "tiers": [
            {"up_to": 10, "unit_price": "1.00"}, {"up_to": None, "unit_price": "0.50"}]}}}}


@pytest.fixture(scope="module")
def edge_settings(settings):  # type: ignore[no-untyped-def]
    return real_worker_settings(settings, scheduler_interval_s=0.2)


async def _calls(client: httpx.AsyncClient, customer_id: str, at: datetime, count: int) -> None:
    batch = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": customer_id, "event_type": "late_call",
              "timestamp": at.isoformat(), "properties": {}} for _ in range(count)]
    ingested = await client.post("/v1/ingest", json=batch, headers=ADMIN)
    assert ingested.status_code == 200 and ingested.json()["accepted"] == count, ingested.text


async def _advance(client: httpx.AsyncClient, seconds: int) -> None:
    moved = await client.post("/v1/clock/advance", json={"seconds": seconds}, headers=ADMIN)
    assert moved.status_code == 200, moved.text


async def test_late_tiered_usage_is_previewed_at_its_marginal_tier_as_the_close_bills_it(
        client: httpx.AsyncClient, real_worker: subprocess.Popen[bytes]) -> None:
    assert (await call(client, "POST", "/v1/meters", METER)).status_code == 201
    assert (await call(client, "POST", "/v1/plans", PLAN)).status_code == 201
    customer_id = (await onboard(client, payment_method_id="pm_card_visa"))["customer_id"]
    created = await call(client, "POST", "/v1/subscriptions", {"customer_id": customer_id,
                                                                  "plan_id": "late_tiered"})
    assert created.status_code == 201, created.text
    sid = created.json()["subscription_id"]
    start = datetime.fromisoformat(created.json()["current_period_start"])
    end = datetime.fromisoformat(created.json()["current_period_end"])

    await _advance(client, 86_400)
    await _calls(client, customer_id, start + timedelta(hours=1), 8)

    async def upcoming() -> dict[str, Any]:
        response = await client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=ADMIN)
        assert response.status_code == 200, response.text
        return dict(response.json()["invoice"])

    async def closes() -> list[dict[str, Any]]:
        return [i for i in await invoices(client, customer_id) if i["kind"] == "period_close"]

    await until(lambda: _usage_is(upcoming, 800), "8 calls on the upcoming invoice")
    await _advance(client, int((end - start).total_seconds()) - 86_400 + 60)  # past the end: the close
    [first] = await until(closes, "the first period close")
    assert [a for a in amounts(first) if a[0] == "usage"] == [("usage", 800)]

    await _advance(client, 2 * 3600)
    await _calls(client, customer_id, start + timedelta(hours=2), 4)  # period 1's, late
    await _calls(client, customer_id, end + timedelta(hours=1), 3)

    async def previewed() -> dict[str, Any] | None:
        preview = await upcoming()
        return preview if ("usage", 300) in amounts(preview) and any(
            kind == "adjustment" for kind, _ in amounts(preview)) else None

    preview = await until(previewed, "the late calls and period 2's on the upcoming invoice")
    adjustments = [amount for kind, amount in amounts(preview) if kind == "adjustment"]
    assert adjustments == [200, 100]  # calls 9-10 at 1.00, 11-12 at 0.50 (not 4 x 1.00)
    assert preview["total_minor"] == 300 + 300 + 1000

    second_end = datetime.fromisoformat(preview["period_end"])
    await _advance(client, int((second_end - end).total_seconds()) - 2 * 3600 + 60)

    async def second() -> dict[str, Any] | None:
        found = [i for i in await closes() if i["invoice_id"] == preview["invoice_id"]]
        return found[0] if found else None

    issued = await until(second, "the second period close")
    assert_issued_as_previewed(preview, issued)
    assert real_worker.poll() is None, "the worker exited"


async def _usage_is(upcoming: Any, minor: int) -> bool:
    return ("usage", minor) in amounts(await upcoming())
