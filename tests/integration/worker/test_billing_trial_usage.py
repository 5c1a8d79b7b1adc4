"""Issue 14 defect (found in the demo): a trial's usage is billed at the trial end, on PostgreSQL through the
real handler table. Before, the trial window was never closed: its usage waited for the first paid close, which
billed it in full as "Late usage" adjustments (the trial's credits had expired unused).

Pro with a 14-day trial from Jan 1: it ends Jan 15 (the anchor); the first paid period is Jan 15 - Feb 15 at
USD 9.00 in advance; USD 2.00 of inference included per period (the trial gets its own 2.00, expiring with it),
inference at USD 0.000001 a micro-USD; storage at 0.018 a GB-month with 1,000 included; tax 10%.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from services.ingest.service_layer.line_events import line_events, traced_line
from shared.adapters.postgres.schema.billing import credit_entries, invoice_lines, subscription_periods
from shared.contracts.messages import ClosePeriod, CreateSubscription, EndTrial, ExpireCredits
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_15 = datetime(2026, 1, 15, tzinfo=UTC)
FEB_15 = datetime(2026, 2, 15, tzinfo=UTC)


@pytest.fixture(scope="module")
def billing(engine) -> Billing:  # type: ignore[no-untyped-def]
    return Billing(engine)


def trial(billing: Billing, payment_method: str | None = "pm_card_visa") -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    env = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                          trial_days=14, payment_method_id=payment_method, tax_rate_bps=1000), JAN_1)
    assert billing.outcome(env).status == "applied"
    return sub, cus


def end_trial(billing: Billing, sub: str, cus: str) -> str:
    """The scheduler's trial end, then its expiry of the trial's credits (same instant, same partition)."""
    ended = billing.send(EndTrial(subscription_id=sub, customer_id=cus, trial_end=JAN_15), JAN_15)
    assert billing.outcome(ended).status == "applied"
    billing.send(ExpireCredits(subscription_id=sub, customer_id=cus, at=JAN_15), JAN_15)
    return str(billing.outcome(ended).result["invoice_id"])


def descriptions(billing: Billing, invoice_id: str) -> list[tuple[str, str, int]]:
    with billing.engine.connect() as conn:
        return [(r.kind, r.description, r.amount_minor) for r in conn.execute(
            sa.select(invoice_lines).where(invoice_lines.c.invoice_id == invoice_id)
            .order_by(invoice_lines.c.line_no))]


def test_trial_usage_is_billed_on_the_start_invoice_against_the_trial_credits_not_as_late_usage(
        billing: Billing) -> None:
    sub, cus = trial(billing)
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 1_500_000}, datetime(2026, 1, 5, tzinfo=UTC))
    billing.record_usage(sub, cus, "storage_usage", {"gb_months": "1200"}, datetime(2026, 1, 10, tzinfo=UTC))

    start_id = end_trial(billing, sub, cus)

    # fee 9.00; trial inference 1.50 covered by the trial's 2.00; storage 200 GB-months over the 1,000 included
    # x 0.018 = 3.60; tax 10% of 12.60 = 1.26: 13.86
    assert descriptions(billing, start_id) == [
        ("fee", "Pro (2026-01-15 - 2026-02-15)", 900),
        ("usage", "Trial: Inference compute: 1,500,000 micro-USD", 150),
        ("credit", "Trial credits applied to Inference compute", -150),
        ("usage", "Trial: Private storage: 1,200 GB-months, 1,000 covered by trial credits", 360),
        ("tax", "Tax 10%", 126),
    ]
    [start] = billing.invoices(sub)
    assert (start.invoice_id, start.kind, start.total_minor) == (start_id, "subscription_start", 1386)
    with billing.engine.connect() as conn:
        window = conn.execute(sa.select(subscription_periods).where(
            subscription_periods.c.subscription_id == sub, subscription_periods.c.period_start == JAN_1)).one()
        # the trial's 2.00 of inference: 1.50 consumed, 0.50 expired at the trial end
        entries = sorted((r.kind, r.amount_minor) for r in conn.execute(sa.select(credit_entries).where(
            credit_entries.c.subscription_id == sub, credit_entries.c.amount_minor.is_not(None),
            credit_entries.c.grant_id.like("%trial%"))))
    assert (window.period_end, window.invoice_id, window.closed_at) == (JAN_15, start_id, JAN_15)
    assert ("consume", -150) in entries and ("expire", -50) in entries

    # usage of the paid period, and 0.30 of the trial's that arrived after the trial end (late)
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 500_000}, datetime(2026, 1, 20, tzinfo=UTC))
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 300_000}, datetime(2026, 1, 12, tzinfo=UTC))
    close = billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_15), FEB_15)

    assert billing.outcome(close).status == "applied"
    _start, period = billing.invoices(sub)
    # usage 0.50 covered by the period's 2.00; the trial's late 0.30 at the price (its credits expired with it);
    # March's fee 9.00; tax 10% of 9.30 = 0.93. No trial usage billed again.
    assert billing.lines(period.invoice_id) == [
        ("usage", 50), ("credit", -50), ("adjustment", 30), ("fee", 900), ("tax", 93)]


def test_a_trial_ending_without_a_payment_method_bills_its_overage_on_the_past_due_start_invoice(
        billing: Billing) -> None:
    sub, cus = trial(billing, payment_method=None)
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 2_600_000}, datetime(2026, 1, 5, tzinfo=UTC))

    start_id = end_trial(billing, sub, cus)

    assert billing.subscription(sub).status == "past_due"
    # 9.00 + 2.60 - 2.00 = 9.60, tax 0.96
    assert billing.lines(start_id) == [("fee", 900), ("usage", 260), ("credit", -200), ("tax", 96)]
    close = billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_15), FEB_15)
    assert billing.outcome(close).status == "applied"
    # the first paid close bills March's fee only: nothing of the trial again
    assert billing.lines(billing.outcome(close).result["invoice_id"]) == [("fee", 900), ("tax", 90)]


def test_the_trial_usage_line_lists_the_trial_events_it_billed_not_the_paid_periods(billing: Billing) -> None:
    sub, cus = trial(billing)
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 1_000_000}, datetime(2026, 1, 5, tzinfo=UTC))
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 500_000}, datetime(2026, 1, 14, tzinfo=UTC))
    start_id = end_trial(billing, sub, cus)
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 700_000}, datetime(2026, 1, 20, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_15), FEB_15)
    with billing.engine.connect() as conn:
        line_no = conn.execute(sa.select(invoice_lines.c.line_no).where(
            invoice_lines.c.invoice_id == start_id, invoice_lines.c.kind == "usage")).scalar_one()

    line = traced_line(billing.engine, start_id, line_no)
    assert line is not None and (line.period_start, line.period_end) == (JAN_1, JAN_15)
    events, more = line_events(billing.engine, line, None, 100)

    # the trial's 1,000,000 + 500,000 = the line's 1,500,000; January 20th's 700,000 is the paid close's
    assert (sorted(e.quantity for e in events), more) == ([Decimal(500_000), Decimal(1_000_000)], None)
