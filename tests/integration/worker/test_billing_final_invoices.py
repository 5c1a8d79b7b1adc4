"""Issue 14, item 1 (first half), against real PostgreSQL through the real handler table: cancelling now and
dunning's give-up close the open period up to that instant, so the usage since the last close (including a
partial hour before the cancel) is invoiced, numbered and charged.

Pro: USD 9.00 a month in advance, USD 2.00 of inference included, inference at USD 0.000001 a micro-USD.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import payment_attempts
from shared.contracts.messages import CancelSubscription, ClosePeriod, CreateSubscription, GiveUpDunning
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
FEB_15_1230 = datetime(2026, 2, 15, 12, 30, tzinfo=UTC)


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


def attempts(billing: Billing, invoice_id: str) -> list[tuple[int, str, int]]:
    with billing.engine.connect() as conn:
        return [(r.attempt_no, r.status, r.amount_minor) for r in conn.execute(
            sa.select(payment_attempts).where(payment_attempts.c.invoice_id == invoice_id)
            .order_by(payment_attempts.c.attempt_no))]


def test_cancelling_now_invoices_the_usage_since_the_last_close_up_to_the_cancel_instant(billing: Billing) -> None:
    sub, cus = subscribe(billing)
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    # USD 3.00 on 5 February, USD 2.00 in the partial hour before the cancel, USD 1.00 after it (not billed:
    # the edge refuses it for a cancelled subscription; here it only shows the cut).
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 3_000_000}, datetime(2026, 2, 5, tzinfo=UTC))
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 2_000_000},
                         datetime(2026, 2, 15, 12, 10, tzinfo=UTC))
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 1_000_000},
                         datetime(2026, 2, 15, 12, 50, tzinfo=UTC))

    cancel = billing.send(CancelSubscription(subscription_id=sub, customer_id=cus, reason="moving"), FEB_15_1230)
    again = billing.send(CancelSubscription(subscription_id=sub, customer_id=cus), FEB_15_1230)

    assert billing.outcome(cancel).status == "applied"
    assert (billing.outcome(again).status, billing.outcome(again).error_code) == ("rejected", "invalid_transition")
    _start, _january, final = billing.invoices(sub)
    assert billing.outcome(cancel).result["invoice_id"] == final.invoice_id
    # usage 5.00, included credit -2.00, tax 10% of 3.00 = 0.30; February's fee was paid in advance and is
    # not refunded (policy none).
    assert billing.lines(final.invoice_id) == [("usage", 500), ("credit", -200), ("tax", 30)]
    assert (final.kind, final.status, final.total_minor, final.period_start, final.period_end) == (
        "period_close", "open", 330, FEB_1, FEB_15_1230)
    assert final.number is not None
    assert attempts(billing, final.invoice_id) == [(1, "pending", 330)]
    row = billing.subscription(sub)
    assert (row.status, row.cancel_reason, row.cancelled_at) == ("cancelled", "moving", FEB_15_1230)


def test_dunning_giving_up_invoices_the_usage_since_the_last_close(billing: Billing) -> None:
    sub, cus = subscribe(billing)
    [unpaid] = billing.invoices(sub)
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 5_000_000}, datetime(2026, 1, 5, tzinfo=UTC))

    give_up = billing.send(GiveUpDunning(subscription_id=sub, customer_id=cus, invoice_id=unpaid.invoice_id), JAN_16)

    assert billing.outcome(give_up).status == "applied"
    start, final = billing.invoices(sub)
    assert start.status == "uncollectible"
    assert billing.lines(final.invoice_id) == [("usage", 500), ("credit", -200), ("tax", 30)]
    assert (final.status, final.total_minor, final.period_start, final.period_end) == ("open", 330, JAN_1, JAN_16)
    assert billing.outcome(give_up).result["final_invoice_id"] == final.invoice_id
    assert attempts(billing, final.invoice_id) == [(1, "pending", 330)]
    assert (billing.subscription(sub).status, billing.subscription(sub).cancel_reason) == (
        "cancelled", "dunning_gave_up")
