"""Issue 15, item 5 (catalogued events): a close with a grace announces the DRAFT it stored as
`invoice.drafted` (once, even when the close is replayed); a close without a grace does not."""

from __future__ import annotations

from datetime import timedelta

from shared.contracts.messages import ClosePeriod
from shared.contracts.webhook_events import NOT_PRODUCED_YET, public_event
from tests.unit.worker.test_drafts import HOUR, JAN_20, close
from tests.unit.worker.test_handlers import FEB_1, Worker


def test_a_draft_is_announced_once_with_the_end_of_its_grace() -> None:
    worker = Worker()
    sub = worker.subscribe(tax_rate_bps=1000)
    worker.store.record_usage(sub, "inference", 1_500_000, JAN_20)

    draft = close(worker, sub, HOUR)
    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1,
                            finalize_after_seconds=HOUR), FEB_1)  # replayed: ignored, nothing new

    [event] = [e for e in worker.store.events("invoice.drafted") if e.payload["invoice_id"] == draft.id]
    # usage 1.50 - credit 1.50 + February's fee 9.00 + tax 0.90 = 9.90
    assert event.payload["status"] == "draft" and event.payload["number"] is None
    assert (event.payload["total_minor"], event.payload["currency"]) == (990, "USD")
    assert event.payload["finalizes_at"] == (FEB_1 + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert public_event("invoice.drafted", event.payload) == "invoice.drafted"
    assert "invoice.drafted" not in NOT_PRODUCED_YET


def test_a_close_without_a_grace_announces_no_draft() -> None:
    worker = Worker()
    sub = worker.subscribe(tax_rate_bps=1000)
    worker.store.record_usage(sub, "inference", 1_500_000, JAN_20)
    close(worker, sub, None)
    assert worker.store.events("invoice.drafted") == []
