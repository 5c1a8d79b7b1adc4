"""Issue 15, item 5 (catalogued events), against real PostgreSQL through the real handler table: a close with a
grace stores a DRAFT and writes ONE `invoice.drafted` to the outbox (a replayed close adds nothing); its
finalisation then announces `invoice.finalized` as before.

Pro: USD 9.00 a month in advance, USD 2.00 of inference included; 1.50 of usage: the draft is usage 1.50,
credit -1.50, fee 9.00 = 9.00.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.schema.core import outbox
from shared.contracts.messages import ClosePeriod, CreateSubscription, FinalizeInvoice
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def billing(engine) -> Billing:  # type: ignore[no-untyped-def]
    return Billing(engine)


def test_a_draft_is_announced_once_then_finalized(billing: Billing) -> None:
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                    payment_method_id="pm_card_visa", start_at=START), START)
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 1_500_000}, datetime(2026, 1, 10, tzinfo=UTC))
    close = ClosePeriod(subscription_id=sub, customer_id=cus, period_end=END, finalize_after_seconds=3600)
    assert billing.outcome(billing.send(close, END)).status == "applied"
    billing.send(close, END)  # replayed (a new command id for the same close): refused or ignored, no second draft
    [draft] = [i for i in billing.invoices(sub) if i.status == "draft"]

    def announced(type_: str) -> list[dict[str, object]]:
        with billing.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox.c.envelope).where(
                outbox.c.message_key == sub, outbox.c.event_type == type_)).scalars().all()
        return [r["payload"] for r in rows if r["payload"]["invoice_id"] == draft.invoice_id]

    [drafted] = announced("invoice.drafted")
    assert (drafted["status"], drafted["number"], drafted["total_minor"]) == ("draft", None, 900)
    assert drafted["finalizes_at"] == (END + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert announced("invoice.finalized") == []

    finalize = billing.send(FinalizeInvoice(subscription_id=sub, customer_id=cus, invoice_id=draft.invoice_id),
                            END + timedelta(hours=1))
    assert billing.outcome(finalize).status == "applied"
    assert len(announced("invoice.drafted")) == 1 and len(announced("invoice.finalized")) == 1
