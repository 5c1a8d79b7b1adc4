"""The edge's upcoming-invoice preview over the SQL snapshot (`billing_snapshots.load_snapshot`) against real
PostgreSQL, then the worker's real handlers close the period: the preview equals the issued invoice line by
line, with late usage of a closed period, and with usage of a period whose invoice is still a draft in its
grace (issue 14, items 2 and 5).

Pro: USD 9.00 a month in advance, USD 2.00 of inference included, inference at USD 0.000001 a micro-USD;
10% tax.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.ingest.service_layer import previews
from shared.adapters.postgres.schema.billing import invoice_lines
from shared.contracts.messages import ClosePeriod, CreateSubscription, FinalizeInvoice
from shared.domain.invoice import Invoice
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def billing(engine) -> Billing:  # type: ignore[no-untyped-def]
    return Billing(engine)


def subscribe(billing: Billing) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    env = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                          payment_method_id="pm_card_visa", tax_rate_bps=1000), JAN_1)
    assert billing.outcome(env).status == "applied"
    return sub, cus


def inference(billing: Billing, sub: str, cus: str, micros: int, at: datetime) -> None:
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": micros}, at)


def upcoming(billing: Billing, sub: str, now: datetime) -> Invoice:
    found = previews.upcoming_invoice(previews.SqlSnapshots(billing.engine, billing.catalog), billing.catalog, sub,
                                      now=now, authorize=lambda _: None)
    return found.invoice.invoice


def stored_lines(billing: Billing, invoice_id: str) -> list[tuple[Any, ...]]:
    with billing.engine.connect() as conn:
        return [(r.kind, r.description, r.amount_minor, r.period_start, r.period_end, r.meter_id)
                for r in conn.execute(sa.select(invoice_lines).where(invoice_lines.c.invoice_id == invoice_id)
                                      .order_by(invoice_lines.c.line_no))]


def preview_lines(invoice: Invoice) -> list[tuple[Any, ...]]:
    return [(line.kind.value, line.description, line.amount.amount_minor,
             line.period.start if line.period else None, line.period.end if line.period else None, line.meter_id)
            for line in invoice.lines]


def close(billing: Billing, sub: str, cus: str, period_end: datetime, grace: int | None = None) -> str:
    env = billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=period_end,
                                   finalize_after_seconds=grace), period_end)
    assert billing.outcome(env).status == "applied"
    return str(billing.outcome(env).result["invoice_id"])


def test_late_usage_of_a_closed_period_is_previewed_as_the_adjustment_the_close_bills(billing: Billing) -> None:
    sub, cus = subscribe(billing)
    inference(billing, sub, cus, 1_000_000, datetime(2026, 1, 5, tzinfo=UTC))
    close(billing, sub, cus, FEB_1)
    inference(billing, sub, cus, 3_000_000, datetime(2026, 1, 20, 10, 15, tzinfo=UTC))  # late, after the close
    inference(billing, sub, cus, 2_500_000, datetime(2026, 2, 10, tzinfo=UTC))

    preview = upcoming(billing, sub, datetime(2026, 2, 15, tzinfo=UTC))

    # February: usage 2.50 less its 2.00 included; January's 3.00 arrived late: an adjustment at the hour it
    # came from, with no credit left (January's was written off at its close); March's fee 9.00; tax 10% of
    # 12.50 = 1.25: total 13.75
    assert [(line.kind.value, line.amount.amount_minor) for line in preview.lines] == [
        ("usage", 250), ("credit", -200), ("adjustment", 300), ("fee", 900), ("tax", 125)]
    adjustment = preview.lines[2].period
    assert adjustment is not None and (adjustment.start, adjustment.end) == (
        datetime(2026, 1, 20, 10, tzinfo=UTC), datetime(2026, 1, 20, 11, tzinfo=UTC))
    issued = close(billing, sub, cus, MAR_1)
    assert issued == preview.id
    assert stored_lines(billing, issued) == preview_lines(preview)
    [*_, march] = billing.invoices(sub)
    assert march.total_minor == preview.total.amount_minor == 1375


def test_usage_of_a_period_still_in_its_grace_is_the_drafts_not_an_adjustment_of_the_upcoming_invoice(
        billing: Billing) -> None:
    sub, cus = subscribe(billing)
    inference(billing, sub, cus, 1_000_000, datetime(2026, 1, 10, tzinfo=UTC))
    draft = close(billing, sub, cus, FEB_1, grace=86_400)  # a draft until 2 February
    inference(billing, sub, cus, 1_500_000, datetime(2026, 1, 20, tzinfo=UTC))  # January's, during the grace
    inference(billing, sub, cus, 2_500_000, datetime(2026, 2, 3, tzinfo=UTC))

    preview = upcoming(billing, sub, FEB_1 + timedelta(hours=12))

    # before: the January usage showed as a 1.50 adjustment here, and the draft took it when finalised
    assert [(line.kind.value, line.amount.amount_minor) for line in preview.lines] == [
        ("usage", 250), ("credit", -200), ("fee", 900), ("tax", 95)]
    finalised = billing.send(FinalizeInvoice(subscription_id=sub, customer_id=cus, invoice_id=draft),
                             FEB_1 + timedelta(days=1))
    assert billing.outcome(finalised).status == "applied"
    issued = close(billing, sub, cus, MAR_1)
    assert issued == preview.id
    assert stored_lines(billing, issued) == preview_lines(preview)
