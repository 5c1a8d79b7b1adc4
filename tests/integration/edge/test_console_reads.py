"""The console's read queries on PostgreSQL: revenue grouped by month and currency, owed totals, and the
invoice list's keyset pages and filters. Invoice rows are written here as the worker would have left them
(a read-side test: the worker's own tests cover how they come to be)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.ingest.service_layer import console_reads
from shared.adapters.postgres.schema.billing import invoices

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 15, 12, tzinfo=UTC)


def _invoice(n: int, *, status: str, total: int, paid: int = 0, currency: str = "USD", issued: datetime | None,
             customer: str = "cus_a", period_start: datetime = T0, credit: int = 0) -> dict:
    return {"invoice_id": f"in_{n:03d}", "subscription_id": f"sub_{customer}", "customer_id": customer,
            "kind": "manual", "period_start": period_start, "period_end": period_start + timedelta(days=30),
            "status": status, "number": None if status == "draft" else f"N-{n:03d}", "currency": currency,
            "total_minor": total, "amount_due_minor": max(total, 0), "amount_paid_minor": paid,
            "pre_payment_credit_minor": credit, "issued_at": issued, "paid_at": issued if status == "paid" else None,
            "created_at": T0 + timedelta(minutes=n)}


@pytest.fixture(scope="module")
def seeded(engine):  # type: ignore[no-untyped-def]
    feb = T0 + timedelta(days=31)
    rows = [
        _invoice(1, status="paid", total=1000, paid=1000, issued=T0),
        _invoice(2, status="open", total=2500, issued=T0, credit=500),  # a credit note took 5.00 off
        _invoice(3, status="uncollectible", total=700, paid=200, issued=T0 + timedelta(days=3)),
        _invoice(4, status="void", total=9999, issued=T0),  # voided: never counted
        _invoice(5, status="draft", total=400, issued=None),  # not final: not counted
        _invoice(6, status="paid", total=-300, paid=0, issued=feb),  # credits beyond charges: invoiced 0
        _invoice(7, status="paid", total=1200, paid=1200, issued=feb, customer="cus_b", period_start=feb),
        _invoice(8, status="open", total=5000, issued=feb, currency="EUR", customer="cus_b", period_start=feb),
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(invoices), rows)
    return engine


def test_revenue_is_grouped_by_month_and_currency_with_owed_totals(seeded):
    data = console_reads.overview(seeded)
    usd, eur = data.by_currency  # the currency with the most invoiced first
    assert usd.currency == "USD" and eur.currency == "EUR"
    assert [(m.month, m.invoiced_minor, m.collected_minor, m.written_off_minor) for m in usd.months] == [
        ("2026-01", 1000 + 2500 + 700, 1000 + 200, 700 - 200),
        ("2026-02", 0 + 1200, 1200, 0)]
    assert (usd.open_minor, usd.open_count) == (2500 - 500, 1)
    assert (usd.uncollectible_minor, usd.uncollectible_count) == (500, 1)
    assert [(m.month, m.invoiced_minor) for m in eur.months] == [("2026-02", 5000)]
    assert (eur.open_minor, eur.open_count) == (5000, 1)


def test_the_invoice_list_pages_newest_first_without_gaps_or_repeats(seeded):
    seen, after = [], None
    for _ in range(10):
        page, after = console_reads.invoice_page(seeded, after=after, limit=3)
        seen += [r.invoice_id for r in page]
        if after is None:
            break
    assert seen == [f"in_{n:03d}" for n in range(8, 0, -1)]


def test_the_invoice_list_filters_by_customer_status_and_billing_month(seeded):
    def ids(**filters):  # type: ignore[no-untyped-def]
        return [r.invoice_id for r in console_reads.invoice_page(seeded, limit=50, **filters)[0]]

    assert ids(status="paid") == ["in_007", "in_006", "in_001"]
    assert ids(month="2026-02") == ["in_008", "in_007"]
    assert ids(customer_id="cus_b", status="open") == ["in_008"]
    assert ids(month="2025-12") == []
    owed = {r.invoice_id: r.owed_minor for r in console_reads.invoice_page(seeded, limit=50)[0]}
    assert (owed["in_002"], owed["in_003"]) == (2000, 500)
