"""Issue 14, item 2, against real PostgreSQL through the real handler table: usage of a draft's period that
arrives during its grace is taken from the hour buckets exactly once, including the hours a period boundary
cuts in two (the subscription starts at 10:30, so its periods start and end inside an hour).

Pro: USD 9.00 a month in advance, USD 2.00 of inference included, inference at USD 0.000001 a micro-USD; no tax.
Hand-computed, period [1 Jan 10:30, 1 Feb 10:30):
- before the close: 1,000,000 at 1 Jan 10:40 and 500,000 at 1 Feb 10:10 (1.50), and 300,000 at 1 Feb 10:45 (the
  next period, in the same hour as the period end). The draft: usage 1.50, credit -1.50, fee 9.00 = 9.00.
- during the grace: 600,000 at 1 Jan 10:50 (the hour the period starts in), 200,000 on 15 Jan, 400,000 at
  1 Feb 10:20 (the hour it ends in) = 1,200,000 of the period, and 100,000 at 1 Feb 10:50 (the next period).
  Finalised: usage 2.70, credit -2.00, fee 9.00 = 9.70.
- the close of 1 Mar bills February's 300,000 + 100,000 = 0.40 (covered by February's credit) and no late line.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import credit_entries
from shared.adapters.postgres.schema.usage import usage_closes
from shared.contracts.messages import ClosePeriod, CreateSubscription, FinalizeInvoice
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
END = datetime(2026, 2, 1, 10, 30, tzinfo=UTC)
NEXT_END = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def billing(engine) -> Billing:  # type: ignore[no-untyped-def]
    return Billing(engine)


def test_usage_received_in_the_grace_is_taken_once_from_the_hours_cut_by_the_period_edges(billing: Billing) -> None:
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    created = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                              payment_method_id="pm_card_visa", start_at=START), START)
    assert billing.outcome(created).status == "applied"
    assert billing.subscription(sub).current_period_end == END

    def usage(micros: int, at: datetime) -> None:
        billing.record_usage(sub, cus, "inference", {"cost_usd_micros": micros}, at)

    usage(1_000_000, datetime(2026, 1, 1, 10, 40, tzinfo=UTC))
    usage(500_000, datetime(2026, 2, 1, 10, 10, tzinfo=UTC))
    usage(300_000, datetime(2026, 2, 1, 10, 45, tzinfo=UTC))
    close = billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=END,
                                     finalize_after_seconds=3600), END)
    assert billing.outcome(close).status == "applied"
    [draft] = [i for i in billing.invoices(sub) if i.status == "draft"]
    assert (draft.number, draft.finalizes_at) == (None, END + timedelta(hours=1))
    assert billing.lines(draft.invoice_id) == [("usage", 150), ("credit", -150), ("fee", 900)]

    usage(600_000, datetime(2026, 1, 1, 10, 50, tzinfo=UTC))
    usage(200_000, datetime(2026, 1, 15, tzinfo=UTC))
    usage(400_000, datetime(2026, 2, 1, 10, 20, tzinfo=UTC))
    usage(100_000, datetime(2026, 2, 1, 10, 50, tzinfo=UTC))
    finalize = billing.send(FinalizeInvoice(subscription_id=sub, customer_id=cus, invoice_id=draft.invoice_id),
                            END + timedelta(hours=1))
    again = billing.send(FinalizeInvoice(subscription_id=sub, customer_id=cus, invoice_id=draft.invoice_id),
                         END + timedelta(hours=2))

    assert (billing.outcome(finalize).status, billing.outcome(again).status) == ("applied", "ignored")
    [final] = [i for i in billing.invoices(sub) if i.invoice_id == draft.invoice_id]
    assert (final.status, final.total_minor, final.issued_at) == ("open", 970, END + timedelta(hours=1))
    assert final.number is not None
    assert billing.lines(final.invoice_id) == [("usage", 270), ("credit", -200), ("fee", 900)]
    with billing.engine.connect() as conn:
        totals = conn.execute(sa.select(usage_closes.c.totals).where(usage_closes.c.subscription_id == sub,
                                                                     usage_closes.c.period_end == END)).scalar_one()
    assert totals == {"inference": "2700000"}
    with billing.engine.connect() as conn:
        drawn = conn.execute(sa.select(credit_entries.c.invoice_id, credit_entries.c.amount_minor).where(
            credit_entries.c.subscription_id == sub, credit_entries.c.kind == "consume")
            .order_by(credit_entries.c.seq)).all()
    assert [tuple(r) for r in drawn] == [(draft.invoice_id, -150), (draft.invoice_id, -50)]  # the close, the grace

    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=NEXT_END), NEXT_END)
    [march] = [i for i in billing.invoices(sub) if i.period_end == NEXT_END]
    assert billing.lines(march.invoice_id) == [("usage", 40), ("credit", -40), ("fee", 900)]
