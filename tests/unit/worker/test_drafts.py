"""Issue 14, item 2: a period-close invoice stays DRAFT for a grace; usage of its period arriving meanwhile is
billed on it as usage of its period, exactly as if it had arrived before the period end (fake unit of work).

Pro: USD 9.00 a month in advance; inference at USD 0.000001 a micro-USD with USD 2.00 included (money
credits); storage at USD 0.018 a GB-month with 1,000 GB-months included (unit credits).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts.messages import CancelSubscription, ClosePeriod, FinalizeInvoice
from shared.domain.invoice import Invoice, InvoiceStatus
from shared.domain.invoice_grace import finalizes_at, invoice_grace_seconds
from tests.unit.worker.test_handlers import FEB_1, MAR_1, Worker

HOUR = 3600
JAN_20 = datetime(2026, 1, 20, tzinfo=UTC)
JAN_31_LATE = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)  # inside January, reported after its end
FEB_1_0030 = FEB_1 + timedelta(minutes=30)
FEB_1_0100 = FEB_1 + timedelta(hours=1)
FEB_10 = datetime(2026, 2, 10, tzinfo=UTC)


@pytest.fixture
def worker() -> Worker:
    return Worker()


def close(worker: Worker, sub: str, grace: int | None, at: datetime = FEB_1) -> Invoice:
    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1,
                            finalize_after_seconds=grace), at)
    [closed] = [i for i in worker.invoices(sub) if i.key.reason.value == "period_close" and i.period.end == FEB_1]
    return closed


def finalize(worker: Worker, sub: str, invoice: Invoice, at: datetime) -> Invoice:
    envelope = worker.send(FinalizeInvoice(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice.id), at)
    assert worker.outcome(envelope)[0] in ("applied", "ignored")
    return worker.store.invoices[invoice.id][0]


# --------------------------------------------------------------------------------------- the grace rule


def test_the_customer_grace_overrides_the_issuer_default_even_when_it_is_zero() -> None:
    assert invoice_grace_seconds(None, HOUR) == HOUR
    assert invoice_grace_seconds(7200, HOUR) == 7200
    assert invoice_grace_seconds(0, HOUR) == 0
    assert finalizes_at(FEB_1, HOUR) == FEB_1_0100
    assert finalizes_at(FEB_1, 0) is None and finalizes_at(FEB_1, None) is None


# --------------------------------------------------------------------------------------- the worker


def test_a_close_with_a_grace_stores_a_draft_without_number_attempt_or_event(worker: Worker) -> None:
    sub = worker.subscribe(tax_rate_bps=1000)
    worker.store.record_usage(sub, "inference", 1_500_000, JAN_20)

    draft = close(worker, sub, HOUR)

    assert (draft.status, draft.number) == (InvoiceStatus.DRAFT, None)
    assert worker.store.invoices[draft.id][1].finalizes_at == FEB_1_0100
    assert worker.attempts(draft.id) == []
    assert draft.id not in [e.payload["invoice_id"] for e in worker.store.events("invoice.finalized")]
    # usage 1.50, credit -1.50, February's fee 9.00, tax 10% of 9.00 = 0.90
    assert worker.store.lines(draft) == [("usage", 150), ("credit", -150), ("fee", 900), ("tax", 90)]


def test_usage_arriving_in_the_grace_is_billed_on_the_draft_as_if_it_had_arrived_before_the_period_end(
        worker: Worker) -> None:
    sub = worker.subscribe(tax_rate_bps=1000)
    worker.store.record_usage(sub, "inference", 1_500_000, JAN_20)
    worker.store.record_usage(sub, "storage", 800, JAN_20)
    draft = close(worker, sub, HOUR)
    worker.store.record_usage(sub, "inference", 1_000_000, JAN_31_LATE)  # arrives at 00:30, 30 min late
    worker.store.record_usage(sub, "storage", 500, JAN_31_LATE)

    final = finalize(worker, sub, draft, FEB_1_0100)

    # inference 2.50 less the whole USD 2.00 included; storage 1,300 less the 1,000 included = 300 x 0.018 =
    # 5.40; fee 9.00; tax 10% of (0.50 + 5.40 + 9.00) = 1.49; total 16.39
    assert worker.store.lines(final) == [("usage", 250), ("credit", -200), ("usage", 540), ("fee", 900),
                                         ("tax", 149)]
    assert (final.status, final.total.amount_minor, final.finalized_at) == (InvoiceStatus.OPEN, 1639, FEB_1_0100)
    assert final.number is not None
    assert [(a["status"], a["amount_minor"]) for a in worker.attempts(final.id)] == [("pending", 1639)]
    assert final.id in [e.payload["invoice_id"] for e in worker.store.events("invoice.finalized")]
    # the same usage, all of it before the period end, without a grace: the same lines, to the cent
    twin = Worker()
    twin.subscribe(tax_rate_bps=1000)
    for meter, quantity in (("inference", 1_500_000), ("storage", 800), ("inference", 1_000_000), ("storage", 500)):
        twin.store.record_usage(sub, meter, quantity, JAN_20)
    on_time = close(twin, sub, None)
    assert [(line.kind, line.description, line.amount) for line in on_time.lines] == [
        (line.kind, line.description, line.amount) for line in final.lines]


def test_usage_after_the_draft_is_finalised_is_a_late_adjustment_on_the_next_invoice(worker: Worker) -> None:
    sub = worker.subscribe()
    worker.store.record_usage(sub, "inference", 3_000_000, JAN_20)
    draft = close(worker, sub, HOUR)
    worker.store.record_usage(sub, "inference", 2_000_000, JAN_31_LATE)
    final = finalize(worker, sub, draft, FEB_1_0100)
    worker.store.record_usage(sub, "inference", 1_000_000, JAN_31_LATE)  # after the finalisation

    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=MAR_1), MAR_1)

    assert worker.store.lines(final) == [("usage", 500), ("credit", -200), ("fee", 900)]
    [march] = [i for i in worker.invoices(sub) if i.period.end == MAR_1]
    # the late 1.00 is rated with January's credits, spent already: an adjustment of 1.00, plus March's fee
    assert worker.store.lines(march) == [("adjustment", 100), ("fee", 900)]


def test_finalising_twice_or_a_finalised_invoice_is_ignored(worker: Worker) -> None:
    sub = worker.subscribe()
    draft = close(worker, sub, HOUR)
    final = finalize(worker, sub, draft, FEB_1_0030)
    again = worker.send(FinalizeInvoice(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=draft.id),
                        FEB_1_0100)

    assert worker.outcome(again) == ("ignored", None)
    assert (final.status, final.finalized_at) == (InvoiceStatus.OPEN, FEB_1_0030)  # asked before the grace end
    assert len(worker.attempts(final.id)) == 1


def test_a_finalise_applied_after_the_grace_end_finalises_at_the_grace_end(worker: Worker) -> None:
    sub = worker.subscribe()
    draft = close(worker, sub, HOUR)

    final = finalize(worker, sub, draft, FEB_10)

    assert final.finalized_at == FEB_1_0100


def test_an_unknown_invoice_is_refused_not_found(worker: Worker) -> None:
    sub = worker.subscribe()
    envelope = worker.send(FinalizeInvoice(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id="inv_nope"),
                           FEB_1)

    assert worker.outcome(envelope) == ("rejected", "not_found")


def test_a_draft_keeps_the_period_credits_until_it_is_finalised(worker: Worker) -> None:
    sub = worker.subscribe()
    draft = close(worker, sub, HOUR)
    ledger = worker.store.ledgers[sub].ledger
    assert not [e for e in ledger.entries if e.kind.value == "expire"]

    finalize(worker, sub, draft, FEB_1_0100)

    ledger = worker.store.ledgers[sub].ledger
    assert [e for e in ledger.entries if e.kind.value == "expire"]


def test_cancelling_now_while_the_previous_invoice_is_a_draft_leaves_it_to_finalise_later(worker: Worker) -> None:
    sub = worker.subscribe()
    worker.store.record_usage(sub, "inference", 3_000_000, JAN_20)
    draft = close(worker, sub, HOUR)
    worker.store.record_usage(sub, "inference", 1_000_000, FEB_1_0030)  # February's usage

    cancel = worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), FEB_1_0030 + timedelta(1))
    final = finalize(worker, sub, draft, FEB_1_0100 + timedelta(1))

    assert worker.outcome(cancel) == ("applied", None)
    assert (final.status, final.total.amount_minor) == (InvoiceStatus.OPEN, 100 + 900)
    assert worker.store.lines(final) == [("usage", 300), ("credit", -200), ("fee", 900)]


def test_a_draft_with_nothing_to_bill_is_voided_unnumbered_at_the_end_of_its_grace(worker: Worker) -> None:
    # Cancelled at the period end with no usage: the close has nothing to bill; with a grace its draft is kept
    # (usage may still land on it), and when none did it must not become a numbered 0.00 invoice.
    sub = worker.subscribe()
    worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}", at_period_end=True), JAN_20)
    draft = close(worker, sub, HOUR)
    assert worker.store.lines(draft) == []

    final = finalize(worker, sub, draft, FEB_1_0100)

    assert (final.status, final.number) == (InvoiceStatus.VOID, None)
    assert worker.attempts(final.id) == []
    assert draft.id not in [e.payload["invoice_id"] for e in worker.store.events("invoice.finalized")]
