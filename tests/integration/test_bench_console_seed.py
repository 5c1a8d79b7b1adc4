"""The console benchmark's seed (bench/bench_console.py) gives the demo's shape on a fresh schema: 600
customers, 1,200 finalised invoices whose totals are the sums of their lines, the usage events asked for
and their hourly aggregates; the busiest customer's usage page reads from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bench.bench_console import seed
from services.ingest.portal.render import render_page
from services.ingest.service_layer import portal
from shared.adapters.catalog_file import load_default_catalog
from shared.domain.portal_link import PortalGrant

pytestmark = pytest.mark.integration


def test_the_seed_has_the_demos_shape_and_the_busiest_customers_page_reads_from_it(engine):
    seeded = seed(engine, usage_events=5000)

    assert seeded["counts"]["customers"] == 600 and seeded["counts"]["invoices"] == 1200
    assert seeded["counts"]["usage_events"] == 5000
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT sum(event_count) FROM usage_aggregates")).scalar_one() == 5000
        unbalanced = conn.execute(sa.text(
            "SELECT count(*) FROM invoices i WHERE total_minor <> "
            "(SELECT sum(amount_minor) FROM invoice_lines l WHERE l.invoice_id = i.invoice_id)")).scalar_one()
    assert unbalanced == 0
    now = datetime(2026, 2, 20, 12, tzinfo=UTC)
    catalog = load_default_catalog()
    page = portal.load_page(engine, PortalGrant(seeded["customer_id"], now + timedelta(hours=1)), now,
                            lambda _plan: catalog)
    assert page is not None and len(page.subscriptions) == 1 and len(page.invoices) == 2
    [daily] = [d for d in page.subscriptions[0].daily if d.meter_id == "inference"]
    assert len(daily.days) == 20 and sum(daily.quantities) > 0  # Feb 1 .. Feb 20
    assert seeded["customer_id"] in render_page(page, "token")
