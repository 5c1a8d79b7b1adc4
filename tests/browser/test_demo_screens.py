"""`make demo`'s screenshots (services.demo.screens) on the real edge and worker: the console's overview, a
customer's console page and that customer's usage page (through a portal link) are written as PNGs; a
screenshot that cannot be taken is reported, not raised."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from services import demo
from services.demo import screenshots
from services.demo.screens import showcase_customer, take

from .conftest import ADMIN_KEY, onboard, subscribe, until

pytestmark = pytest.mark.integration
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_demo_screenshots_show_the_console_and_the_busiest_customers_usage_page(
        api, base_url, engine, edge_settings, real_worker, tmp_path, monkeypatch):
    quiet = onboard(api, name="Quiet Customer", payment_method_id="pm_card_visa")
    busy = onboard(api, name="Busy Customer", payment_method_id="pm_card_visa")
    for customer in (quiet, busy):
        subscribe(api, customer["customer_id"], "pro")
    now = datetime.fromisoformat(api.get("/v1/clock").json()["now"])
    assert api.post("/v1/clock/advance", json={"seconds": 3 * 3600}).status_code == 200  # no future usage
    events = [{"transaction_id": f"tx-{uuid.uuid4().hex[:12]}", "customer_id": c["customer_id"],
               "event_type": "inference", "timestamp": (now + timedelta(minutes=m)).isoformat(),
               "properties": {"cost_usd_micros": 1000}} for c, minutes in ((quiet, [1]), (busy, [1, 70, 130]))
              for m in minutes]
    assert api.post("/v1/ingest", json=events).json()["accepted"] == 4
    until(lambda: showcase_customer(engine) == busy["customer_id"], "the busy customer's usage buckets")

    written = take(base_url, ADMIN_KEY, busy["customer_id"], tmp_path, console=True)

    assert [p.name for p in written] == ["overview.png", "customer.png", "usage.png"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, path  # a rendered page, not a blank one

    # as the demo calls it at the end of January: the usage page only, under var/demo/screens/
    monkeypatch.setattr(demo, "OUT", tmp_path / "var" / "demo")
    january = screenshots(edge_settings, engine, base_url, console_pages=False, usage_name="usage-january.png")
    assert january == {"customer_id": busy["customer_id"], "written": ["var/demo/screens/usage-january.png"]}
    assert (tmp_path / "var" / "demo" / "screens" / "usage-january.png").read_bytes().startswith(PNG)


def test_a_screenshot_that_cannot_be_taken_is_reported_not_raised(edge_settings, engine):
    nowhere = "http://127.0.0.1:9"  # discard port: nothing answers
    onboarded = showcase_customer(engine)
    result = screenshots(edge_settings, engine, nowhere, console_pages=True)
    assert result.get("written") is None and len(result["errors"]) == 1, result
    assert onboarded is None or "ConnectError" in result["errors"][0], result
