"""The upcoming invoice of a trialing subscription is what the worker bills at the trial end, to the cent: the
first fee and the trial's usage rated against the trial's credits (issue 14 defect: the trial's usage was
neither previewed nor billed at the trial end, then billed in full as late usage by the first paid close).

Pro with a 14-day trial from Jan 1 (ends Jan 15), PARTNER10 (10% off fees and usage), tax 10%.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.ingest.service_layer import previews
from shared.contracts.messages import CreateSubscription, EndTrial
from tests.unit.edge.test_previews import FakeSnapshots, Worker, allow, amounts, same
from tests.unit.worker.test_handlers import CATALOG

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_5 = datetime(2026, 1, 5, tzinfo=UTC)
JAN_10 = datetime(2026, 1, 10, tzinfo=UTC)
JAN_15 = datetime(2026, 1, 15, tzinfo=UTC)


def test_a_trialing_subscription_previews_its_trial_usage_on_the_first_invoice_as_the_worker_bills_it() -> None:
    worker = Worker()
    envelope = worker.send(CreateSubscription(subscription_id="sub_1", customer_id="cus_1", plan_id="pro",
                                              currency="USD", trial_days=14, payment_method_id="pm_card_visa",
                                              tax_rate_bps=1000, coupon_id="PARTNER10"), JAN_1)
    assert worker.outcome(envelope) == ("applied", None)
    worker.store.record_usage("sub_1", "inference", 2_600_000, JAN_5)

    upcoming = previews.upcoming_invoice(FakeSnapshots(worker), CATALOG, "sub_1", now=JAN_10, authorize=allow)

    preview = upcoming.invoice
    assert (preview.billed_at, preview.estimate, preview.invoice.key.reason.value) == (
        JAN_15, True, "subscription_start")
    # fee 9.00, trial usage 2.60 - trial credits 2.00, 10% off 9.60 = -0.96, tax 10% of 8.64 = 0.86: 9.50
    assert amounts(preview.invoice) == [("fee", 900), ("usage", 260), ("credit", -200), ("discount", -96),
                                        ("tax", 86)]
    ended = worker.send(EndTrial(subscription_id="sub_1", customer_id="cus_1", trial_end=JAN_15), JAN_15)
    assert worker.outcome(ended) == ("applied", None)
    same(preview.invoice, worker.issued(worker.result(ended)["invoice_id"]))
