"""Previews (issue 14, item 5) on fakes: the edge's preview use cases read a snapshot of the worker's fake store
(`FakeSnapshots`, the port the SQL snapshot implements), and the worker's real handlers then bill on the same
store, so each test compares the preview with the invoice the worker really issues, line by line.

Pro: USD 9.00 a month in advance, USD 2.00 of inference included, inference at USD 0.000001 a micro-USD.
Team: USD 20.00 a seat, USD 2.00 of inference included per seat. January has 31 days.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.ingest.service_layer import previews
from services.ingest.service_layer.refusals import NoUpcomingInvoice, UnknownSubscription
from shared.adapters.postgres.billing_snapshots import BillingSnapshot
from shared.contracts.messages import CancelSubscription, ChangePlan, ChangeSeats, ClosePeriod, CreateSubscription
from shared.domain.calendar import Period
from shared.domain.catalog import MeterId, credit_kinds
from shared.domain.errors import DomainError
from shared.domain.invoice import Invoice
from shared.domain.ledger import CreditLedger, MeterCredit
from shared.domain.rating import LateUsage
from shared.errors import refusal_code
from tests.unit.worker.test_handlers import CATALOG
from tests.unit.worker.test_handlers import Worker as HandlerWorker

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_10 = datetime(2026, 1, 10, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


class FakeSnapshots:
    """`previews.Snapshots` over the worker's fake store: fresh copies, usage not yet billed (as the SQL
    snapshot reads it), and a count of reads."""

    def __init__(self, worker: HandlerWorker) -> None:
        self.store = worker.store

    def snapshot(self, subscription_id: str) -> BillingSnapshot | None:
        state = self.store.subscriptions.get(subscription_id)
        if state is None:
            return None
        sub = copy.deepcopy(state.subscription)
        stored = self.store.ledgers.get(subscription_id)
        ledger = (copy.deepcopy(stored.ledger) if stored is not None else CreditLedger.open(
            subscription_id, [MeterCredit(m, None if units else state.currency)
                              for m, units in credit_kinds(CATALOG).items()], state.timezone))
        start = sub.current_period.start
        totals: dict[MeterId, Decimal] = {}
        late: dict[str, list[Any]] = {}
        for index, bucket in enumerate(self.store.usage):
            if bucket.subscription_id != subscription_id or index in self.store.billed:
                continue
            if bucket.bucket_start >= start:
                totals[MeterId(bucket.meter_id)] = totals.get(MeterId(bucket.meter_id), Decimal(0)) + bucket.quantity
            else:
                late.setdefault(bucket.meter_id, []).append(bucket)
        late_usage = [LateUsage(MeterId(m), Period(min(b.bucket_start for b in bs),
                                                   max(b.bucket_start for b in bs) + timedelta(hours=1)),
                                sum((b.quantity for b in bs), Decimal(0))) for m, bs in sorted(late.items())]
        return BillingSnapshot(subscription=sub, currency=state.currency, timezone=state.timezone,
                               tax_rate_bps=state.tax_rate_bps, ledger=ledger, usage_totals=totals,
                               late_usage=late_usage,
                               balance_minor=self.store.balances.get((sub.customer_id, state.currency), 0))


class Worker(HandlerWorker):
    def subscribe_to(self, plan: str, *, seats: int = 1, coupon_id: str | None = None) -> str:
        envelope = self.send(CreateSubscription(subscription_id="sub_1", customer_id="cus_1", plan_id=plan,
                                                seats=seats, currency="USD", payment_method_id="pm_card_visa",
                                                tax_rate_bps=1000, coupon_id=coupon_id), JAN_1)
        assert self.outcome(envelope) == ("applied", None)
        return "sub_1"

    def issued(self, invoice_id: str) -> Invoice:
        invoice, _ = self.store.invoices[invoice_id]
        return invoice


@pytest.fixture
def worker() -> Worker:
    return Worker()


def allow(_: str) -> None:
    return None


def lines(invoice: Invoice) -> list[tuple[Any, ...]]:
    return [(line.kind.value, line.description, line.amount.amount_minor, line.quantity,
             line.unit_price.amount if line.unit_price else None, line.period, line.meter_id, line.proration)
            for line in invoice.lines]


def amounts(invoice: Invoice) -> list[tuple[str, int]]:
    return [(line.kind.value, line.amount.amount_minor) for line in invoice.lines]


def same(preview: Invoice, issued: Invoice) -> None:
    assert preview.id == issued.id
    assert lines(preview) == lines(issued)
    assert (preview.subtotal, preview.tax, preview.total, preview.balance_applied_minor, preview.amount_due) == (
        issued.subtotal, issued.tax, issued.total, issued.balance_applied_minor, issued.amount_due)


def usage(worker: Worker, micros: Iterable[tuple[int, datetime]]) -> None:
    for quantity, at in micros:
        worker.store.record_usage("sub_1", "inference", quantity, at)


def test_the_upcoming_invoice_is_the_period_close_the_worker_then_issues_to_the_cent(worker: Worker) -> None:
    worker.subscribe_to("pro", coupon_id="PARTNER10")
    usage(worker, [(2_000_000, JAN_10), (1_500_000, JAN_16 + timedelta(hours=3))])
    snapshots = FakeSnapshots(worker)

    upcoming = previews.upcoming_invoice(snapshots, CATALOG, "sub_1", now=JAN_16 + timedelta(hours=5),
                                         authorize=allow)

    preview = upcoming.invoice
    assert (preview.billed_at, preview.estimate, preview.plan_id) == (FEB_1, True, "pro")
    # usage 3.50, included credit -2.00, February's fee 9.00, PARTNER10 10% of the fee and the usage after
    # credits (9.00 + 1.50) = -1.05, tax 10% of 9.45 = 0.945 -> 0.95: total 10.40.
    assert amounts(preview.invoice) == [("usage", 350), ("credit", -200), ("fee", 900), ("discount", -105),
                                        ("tax", 95)]
    assert preview.invoice.total.amount_minor == 1040
    close = worker.send(ClosePeriod(subscription_id="sub_1", customer_id="cus_1", period_end=FEB_1), FEB_1)
    same(preview.invoice, worker.issued(worker.result(close)["invoice_id"]))


def test_an_immediate_upgrade_preview_is_the_change_invoice_and_then_the_close_the_worker_issues(
        worker: Worker) -> None:
    worker.subscribe_to("pro")
    usage(worker, [(3_000_000, JAN_10)])

    preview = previews.preview_change(FakeSnapshots(worker), CATALOG, "sub_1",
                                      previews.ChangeRequest(plan_id="team"), at=JAN_16, authorize=allow)

    assert (preview.kind.value, preview.timing.value, preview.deferred) == ("upgrade", "immediate", False)
    assert preview.invoice_now is not None and preview.next_invoice is not None
    # 16 of January's 31 days left: Pro's unused 9.00 x 16/31 = -4.65, Team's 20.00 x 16/31 = 10.32;
    # tax 10% of 5.67 = 0.57.
    assert amounts(preview.invoice_now.invoice) == [("proration", -465), ("proration", 1032), ("tax", 57)]
    change = worker.send(ChangePlan(subscription_id="sub_1", customer_id="cus_1", plan_id="team"), JAN_16)
    assert worker.outcome(change) == ("applied", None)
    same(preview.invoice_now.invoice, worker.issued(worker.result(change)["invoice_id"]))

    close = worker.send(ClosePeriod(subscription_id="sub_1", customer_id="cus_1", period_end=FEB_1), FEB_1)
    same(preview.next_invoice.invoice, worker.issued(worker.result(close)["invoice_id"]))
    # January's usage 3.00 rated on Team, less the 2.00 included (Team's one seat includes what Pro did, so the
    # upgrade grants nothing more), February's Team seat 20.00, tax 10% of 21.00
    assert amounts(preview.next_invoice.invoice) == [("usage", 300), ("credit", -200), ("fee", 2000), ("tax", 210)]


def test_a_seat_change_preview_is_the_change_invoice_the_worker_issues(worker: Worker) -> None:
    worker.subscribe_to("team", seats=2)

    preview = previews.preview_change(FakeSnapshots(worker), CATALOG, "sub_1", previews.ChangeRequest(seats=3),
                                      at=JAN_16, authorize=allow)

    assert preview.invoice_now is not None and preview.next_invoice is not None
    # 2 seats' unused 40.00 x 16/31 = -20.65, 3 seats' 60.00 x 16/31 = 30.97; tax 10% of 10.32 = 1.03
    assert amounts(preview.invoice_now.invoice) == [("proration", -2065), ("proration", 3097), ("tax", 103)]
    change = worker.send(ChangeSeats(subscription_id="sub_1", customer_id="cus_1", seats=3), JAN_16)
    same(preview.invoice_now.invoice, worker.issued(worker.result(change)["invoice_id"]))
    close = worker.send(ClosePeriod(subscription_id="sub_1", customer_id="cus_1", period_end=FEB_1), FEB_1)
    same(preview.next_invoice.invoice, worker.issued(worker.result(close)["invoice_id"]))
    assert amounts(preview.next_invoice.invoice) == [("fee", 6000), ("tax", 600)]


def test_a_downgrade_preview_says_deferred_with_nothing_billed_now_and_the_next_fee_on_the_new_plan(
        worker: Worker) -> None:
    worker.subscribe_to("pro")

    preview = previews.preview_change(FakeSnapshots(worker), CATALOG, "sub_1",
                                      previews.ChangeRequest(plan_id="free"), at=JAN_16, authorize=allow)

    assert (preview.kind.value, preview.deferred, preview.effective_at, preview.invoice_now) == (
        "downgrade", True, FEB_1, None)
    assert preview.next_invoice is not None
    worker.send(ChangePlan(subscription_id="sub_1", customer_id="cus_1", plan_id="free"), JAN_16)
    close = worker.send(ClosePeriod(subscription_id="sub_1", customer_id="cus_1", period_end=FEB_1), FEB_1)
    same(preview.next_invoice.invoice, worker.issued(worker.result(close)["invoice_id"]))


def test_an_immediate_downgrade_credits_the_balance_and_the_next_invoice_previews_drawing_it(
        worker: Worker) -> None:
    worker.subscribe_to("premium_monthly_immediate")

    preview = previews.preview_change(FakeSnapshots(worker), CATALOG, "sub_1",
                                      previews.ChangeRequest(plan_id="basic_monthly"), at=JAN_16, authorize=allow)

    assert preview.invoice_now is not None and preview.next_invoice is not None
    now, after = preview.invoice_now.invoice, preview.next_invoice.invoice
    # Premium's unused 20.00 x 16/31 = -10.32, Basic's 10.00 x 16/31 = 5.16, tax 10% of -5.16 = -0.52: -5.68,
    # credited to the customer's balance; February's Basic fee 10.00 + tax 1.00 = 11.00 draws it: 5.32 due
    assert (amounts(now), now.credit_to_carry_forward.amount_minor, now.amount_due.amount_minor) == (
        [("proration", -1032), ("proration", 516), ("tax", -52)], 568, 0)
    assert (amounts(after), after.balance_applied_minor, after.amount_due.amount_minor) == (
        [("fee", 1000), ("tax", 100)], 568, 532)
    change = worker.send(ChangePlan(subscription_id="sub_1", customer_id="cus_1", plan_id="basic_monthly"), JAN_16)
    same(now, worker.issued(worker.result(change)["invoice_id"]))
    close = worker.send(ClosePeriod(subscription_id="sub_1", customer_id="cus_1", period_end=FEB_1), FEB_1)
    same(after, worker.issued(worker.result(close)["invoice_id"]))


def test_a_change_the_worker_refuses_is_refused_by_the_preview_with_the_same_code(worker: Worker) -> None:
    worker.subscribe_to("pro")

    with pytest.raises(DomainError) as refused:
        previews.preview_change(FakeSnapshots(worker), CATALOG, "sub_1", previews.ChangeRequest(plan_id="pro"),
                                at=JAN_16, authorize=allow)
    with pytest.raises(DomainError) as not_per_seat:
        previews.preview_change(FakeSnapshots(worker), CATALOG, "sub_1", previews.ChangeRequest(seats=2),
                                at=JAN_16, authorize=allow)

    same_plan = worker.send(ChangePlan(subscription_id="sub_1", customer_id="cus_1", plan_id="pro"), JAN_16)
    seats = worker.send(ChangeSeats(subscription_id="sub_1", customer_id="cus_1", seats=2), JAN_16)
    assert worker.outcome(same_plan) == ("rejected", refusal_code(refused.value)) == ("rejected", "already_on_plan")
    assert worker.outcome(seats) == ("rejected", refusal_code(not_per_seat.value)) == ("rejected", "not_sold_per_seat")


def test_a_preview_writes_nothing_and_leaves_the_subscription_as_it_was(worker: Worker) -> None:
    worker.subscribe_to("pro")
    usage(worker, [(3_000_000, JAN_10)])
    before = copy.deepcopy(worker.store.__dict__)
    snapshots = FakeSnapshots(worker)

    first = previews.preview_change(snapshots, CATALOG, "sub_1", previews.ChangeRequest(plan_id="team"), at=JAN_16,
                                    authorize=allow)
    again = previews.preview_change(snapshots, CATALOG, "sub_1", previews.ChangeRequest(plan_id="team"), at=JAN_16,
                                    authorize=allow)

    assert first.invoice_now is not None and again.invoice_now is not None
    assert lines(first.invoice_now.invoice) == lines(again.invoice_now.invoice)
    assert worker.store.subscriptions["sub_1"].subscription.plan_id == "pro"
    assert worker.store.invoices.keys() == before["invoices"].keys()
    assert worker.store.outbox.keys() == before["outbox"].keys()


def test_a_trialing_subscription_previews_its_first_invoice_at_the_trial_end(worker: Worker) -> None:
    envelope = worker.send(CreateSubscription(subscription_id="sub_1", customer_id="cus_1", plan_id="basic_monthly",
                                              currency="USD", payment_method_id="pm_card_visa"), JAN_1)
    assert worker.outcome(envelope) == ("applied", None)

    upcoming = previews.upcoming_invoice(FakeSnapshots(worker), CATALOG, "sub_1", now=JAN_10, authorize=allow)

    # Basic: 14 trial days, then USD 10.00 in advance at the trial end (no tax rate given)
    assert (upcoming.invoice.billed_at, upcoming.invoice.invoice.key.reason.value) == (
        JAN_1 + timedelta(days=14), "subscription_start")
    assert amounts(upcoming.invoice.invoice) == [("fee", 1000)]


def test_a_cancelled_subscription_has_no_upcoming_invoice_and_an_unknown_one_is_refused(worker: Worker) -> None:
    worker.subscribe_to("pro")
    worker.send(CancelSubscription(subscription_id="sub_1", customer_id="cus_1"), JAN_16)
    seen: list[str] = []

    with pytest.raises(NoUpcomingInvoice):
        previews.upcoming_invoice(FakeSnapshots(worker), CATALOG, "sub_1", now=JAN_16, authorize=seen.append)
    with pytest.raises(UnknownSubscription):
        previews.upcoming_invoice(FakeSnapshots(worker), CATALOG, "sub_nope", now=JAN_16, authorize=seen.append)
    assert seen == ["cus_1"]  # the owner is authorised before anything is computed
