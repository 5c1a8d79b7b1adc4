"""The open-invoice pass of reconciliation on real PostgreSQL with the simulated provider's durable record:
an open invoice whose PaymentIntent was paid out of band is reported paid once, anything else is left to the
dunning schedule, and a success that is not provably the invoice's is refused. Also the Stripe adapter's
key-less lookup against stripe-mock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.dunning.reconciliation import InvoiceVerdict, PaymentAttemptReader, PaymentReconciler
from shared.adapters.clock import ManualClock
from shared.adapters.payments.port import ChargeOutcome, ChargeRequest, ChargeStatus, PaymentGatewayError
from shared.adapters.payments.simulated import PostgresProviderRecord, SimulatedGateway
from shared.adapters.payments.stripe_gateway import StripeGateway, make_stripe_client
from shared.adapters.postgres.schema.billing import INVOICE_KINDS, invoices, payment_attempts
from shared.adapters.postgres.schema.core import outbox
from shared.adapters.postgres.schema.dunning import dunning_cases
from shared.contracts import topics
from shared.contracts.envelope import Envelope
from shared.domain.money import Money

pytestmark = pytest.mark.integration

NOW = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


def declined_invoice(engine: sa.Engine, gateway: SimulatedGateway, *, due_minor: int = 2000,
                     charged_minor: int | None = None, attempt_status: str = "declined",
                     open_case: bool = True) -> tuple[str, str, str]:
    """An open invoice whose first charge was declined at the provider (its PaymentIntent exists), recorded
    as the worker would, with an open dunning case; returns (invoice, subscription, PaymentIntent)."""
    n = uuid.uuid4().hex[:10]
    invoice_id, subscription_id, customer_id = f"in_{n}", f"sub_{n}", f"cus_{n}"
    outcome = gateway.charge(ChargeRequest(
        invoice_id=invoice_id, amount=Money(charged_minor or due_minor, "USD"), customer_id=customer_id,
        payment_method_id="pm_card_chargeDeclinedInsufficientFunds", idempotency_key=f"pa_{n}_1"))
    assert outcome.status is ChargeStatus.DECLINED and outcome.provider_ref is not None
    with engine.begin() as conn:
        conn.execute(invoices.insert().values(
            invoice_id=invoice_id, subscription_id=subscription_id, customer_id=customer_id,
            kind=INVOICE_KINDS[0], period_start=NOW - timedelta(days=30), period_end=NOW, status="open",
            number=f"INV-{n}", currency="USD", total_minor=due_minor, amount_due_minor=due_minor))
        conn.execute(payment_attempts.insert().values(
            attempt_id=f"att_{n}_1", invoice_id=invoice_id, attempt_no=1, subscription_id=subscription_id,
            customer_id=customer_id, amount_minor=charged_minor or due_minor, currency="USD",
            idempotency_key=f"pa_{n}_1", status=attempt_status, provider_ref=outcome.provider_ref,
            decline_code="insufficient_funds", requested_at=NOW))
        if open_case:
            conn.execute(dunning_cases.insert().values(
                case_id=f"case_{n}", invoice_id=invoice_id, subscription_id=subscription_id,
                customer_id=customer_id, amount_minor=due_minor, currency="USD", opened_at=NOW,
                next_wake_at=NOW + timedelta(days=1)))
    return invoice_id, subscription_id, outcome.provider_ref


def published(engine: sa.Engine, subscription_id: str) -> list[Envelope]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.envelope).where(
            outbox.c.topic == topics.PAYMENTS, outbox.c.message_key == subscription_id)
            .order_by(outbox.c.id)).scalars().all()
    return [Envelope.model_validate(row) for row in rows]


def verdicts(reconciler: PaymentReconciler, invoice_id: str, runs: int = 1) -> list[InvoiceVerdict]:
    return [s.verdict for _ in range(runs) for s in reconciler.reconcile_open_invoices(limit=500)
            if s.invoice_id == invoice_id]


@pytest.fixture
def gateway(engine: sa.Engine) -> SimulatedGateway:
    return SimulatedGateway(PostgresProviderRecord(engine))


def test_an_open_invoice_paid_out_of_band_is_reported_paid_once_however_often_the_pass_runs(
        engine: sa.Engine, gateway: SimulatedGateway) -> None:
    invoice_id, subscription_id, intent = declined_invoice(engine, gateway)
    reconciler = PaymentReconciler(engine, gateway, ManualClock(NOW))
    assert verdicts(reconciler, invoice_id) == [InvoiceVerdict.DECLINED]

    gateway.pay_out_of_band(intent)
    # Twice before the worker applied it (the invoice is still open): looked up twice, published once.
    assert verdicts(reconciler, invoice_id, runs=2) == [InvoiceVerdict.PAID, InvoiceVerdict.PAID]

    [report] = published(engine, subscription_id)
    assert report.type == "payment.succeeded"
    assert report.producer == "dunning"
    assert {k: report.payload[k] for k in ("invoice_id", "provider_ref", "amount_minor", "currency", "source",
                                           "attempt_id")} == {
        "invoice_id": invoice_id, "provider_ref": intent, "amount_minor": 2000, "currency": "USD",
        "source": "reconciliation", "attempt_id": None}


def test_an_invoice_the_provider_was_not_paid_for_is_left_to_the_dunning_schedule(
        engine: sa.Engine, gateway: SimulatedGateway) -> None:
    invoice_id, subscription_id, _ = declined_invoice(engine, gateway)
    reconciler = PaymentReconciler(engine, gateway, ManualClock(NOW))

    assert verdicts(reconciler, invoice_id) == [InvoiceVerdict.DECLINED]
    assert published(engine, subscription_id) == []


def test_a_payment_for_another_amount_is_refused_not_marked_paid(engine: sa.Engine,
                                                                   gateway: SimulatedGateway) -> None:
    # The PaymentIntent was made for 2000, the invoice now asks 2500 (say, a correction): never "paid".
    invoice_id, subscription_id, intent = declined_invoice(engine, gateway, due_minor=2500, charged_minor=2000)
    gateway.pay_out_of_band(intent)

    [settlement] = [s for s in PaymentReconciler(engine, gateway, ManualClock(NOW)).reconcile_open_invoices(500)
                    if s.invoice_id == invoice_id]

    assert settlement.verdict is InvoiceVerdict.MISMATCH
    assert "paid 2000 USD, due 2500 USD" in settlement.reason
    assert published(engine, subscription_id) == []


def test_a_stale_success_of_another_invoices_payment_intent_does_not_mark_this_invoice_paid(
        engine: sa.Engine, gateway: SimulatedGateway) -> None:
    other_invoice, _, other_intent = declined_invoice(engine, gateway, open_case=False)
    gateway.pay_out_of_band(other_intent)
    invoice_id, subscription_id, _ = declined_invoice(engine, gateway)
    with engine.begin() as conn:  # this invoice's attempt points at the other invoice's PaymentIntent
        conn.execute(payment_attempts.update().where(payment_attempts.c.invoice_id == invoice_id)
                     .values(provider_ref=other_intent))

    assert verdicts(PaymentReconciler(engine, gateway, ManualClock(NOW)), invoice_id) == [InvoiceVerdict.MISMATCH]
    assert published(engine, subscription_id) == []
    assert other_invoice != invoice_id


def test_invoices_with_an_attempt_still_unsettled_or_already_succeeded_are_not_looked_at(
        engine: sa.Engine, gateway: SimulatedGateway) -> None:
    unknown, _, unknown_intent = declined_invoice(engine, gateway, attempt_status="unknown")
    succeeded, _, succeeded_intent = declined_invoice(engine, gateway, attempt_status="succeeded")
    settled, _, settled_intent = declined_invoice(engine, gateway)  # the control: its attempt is settled
    for intent in (unknown_intent, succeeded_intent, settled_intent):
        gateway.pay_out_of_band(intent)
    reconciler = PaymentReconciler(engine, gateway, ManualClock(NOW))

    looked_at = {s.invoice_id for s in reconciler.reconcile_open_invoices(limit=500)}

    assert settled in looked_at
    assert not looked_at & {unknown, succeeded}


class ProviderFailingLookupsOf(SimulatedGateway):
    """The simulated provider, except that every lookup about one invoice fails (a persistent provider error)."""

    def __init__(self, record: PostgresProviderRecord, invoice_id: str) -> None:
        super().__init__(record)
        self.failing_invoice_id = invoice_id

    def lookup(self, *, idempotency_key: str | None = None, invoice_id: str,
               provider_ref: str | None = None) -> ChargeOutcome | None:
        if invoice_id == self.failing_invoice_id:
            raise PaymentGatewayError(f"the provider refuses every lookup about {invoice_id}")
        return super().lookup(idempotency_key=idempotency_key, invoice_id=invoice_id, provider_ref=provider_ref)


def test_an_attempt_whose_lookup_keeps_failing_does_not_keep_the_open_invoice_pass_from_running(
        engine: sa.Engine) -> None:
    record = PostgresProviderRecord(engine)
    stuck, _, _ = declined_invoice(engine, SimulatedGateway(record), attempt_status="unknown")
    with engine.begin() as conn:  # the oldest unknown attempt: the first pass looks it up first, every tick
        conn.execute(payment_attempts.update().where(payment_attempts.c.invoice_id == stuck)
                     .values(created_at=NOW - timedelta(days=3650)))
    gateway = ProviderFailingLookupsOf(record, stuck)
    paid_invoice, subscription_id, intent = declined_invoice(engine, gateway)
    gateway.pay_out_of_band(intent)

    with pytest.raises(PaymentGatewayError):
        PaymentReconciler(engine, gateway, ManualClock(NOW)).run(limit=500)

    assert [(e.type, e.payload["invoice_id"]) for e in published(engine, subscription_id)] == [
        ("payment.succeeded", paid_invoice)]


def test_each_run_looks_at_a_bounded_page_and_successive_runs_cover_every_open_invoice(
        engine: sa.Engine, gateway: SimulatedGateway) -> None:
    mine = {declined_invoice(engine, gateway)[0] for _ in range(5)}
    reconciler = PaymentReconciler(engine, gateway, ManualClock(NOW))
    with engine.connect() as conn:
        candidates = len(PaymentAttemptReader().open_invoices_to_check(conn, limit=10_000))
    runs = -(-candidates // 2)  # ceil: one full walk at two invoices per run

    pages = [reconciler.reconcile_open_invoices(limit=2) for _ in range(runs)]

    assert all(len(page) <= 2 for page in pages)
    assert mine <= {s.invoice_id for page in pages for s in page}


def test_the_stripe_adapter_reads_a_payment_intent_by_id_from_stripe_mock(stripe_api_base: str) -> None:
    gateway = StripeGateway(make_stripe_client("sk_test_123", stripe_api_base, timeout_s=10))

    found = gateway.lookup(invoice_id="in_any", provider_ref="pi_reconcile_123")

    # stripe-mock answers with its canned PaymentIntent under the id asked for: status
    # requires_payment_method with a last_payment_error, i.e. a failed, unpaid PaymentIntent.
    assert found is not None
    assert (found.status, found.provider_ref, found.decline_code, found.hard_decline) == (
        ChargeStatus.DECLINED, "pi_reconcile_123", "payment_failed", False)


def test_the_stripe_adapter_ignores_search_results_that_are_not_the_invoices(stripe_api_base: str) -> None:
    gateway = StripeGateway(make_stripe_client("sk_test_123", stripe_api_base, timeout_s=10))

    # stripe-mock's search returns its canned PaymentIntent, whose metadata names no invoice.
    assert gateway.lookup(invoice_id=f"in_{uuid.uuid4().hex[:8]}") is None


def test_an_invoice_given_up_on_is_still_found_paid_within_the_window_and_not_after(
        engine: sa.Engine, gateway: SimulatedGateway) -> None:
    recent, recent_sub, recent_intent = declined_invoice(engine, gateway, open_case=False)
    stale, _, stale_intent = declined_invoice(engine, gateway, open_case=False)
    with engine.begin() as conn:
        for invoice_id, given_up in ((recent, NOW - timedelta(days=29)), (stale, NOW - timedelta(days=31))):
            conn.execute(sa.update(invoices).where(invoices.c.invoice_id == invoice_id)
                         .values(status="uncollectible", marked_uncollectible_at=given_up))
    gateway.pay_out_of_band(recent_intent)  # e.g. a late 3-D Secure confirmation on the hosted page
    gateway.pay_out_of_band(stale_intent)
    reconciler = PaymentReconciler(engine, gateway, ManualClock(NOW), uncollectible_window=timedelta(days=30))

    looked_at = {s.invoice_id: s.verdict for s in reconciler.reconcile_open_invoices(limit=500)}

    assert looked_at.get(recent) is InvoiceVerdict.PAID
    assert stale not in looked_at  # past the window: found by the provider's own reports, not by this scan
    [report] = published(engine, recent_sub)
    assert report.type == "payment.succeeded" and report.payload["invoice_id"] == recent


def test_an_attempt_whose_lookup_keeps_failing_does_not_keep_other_unknown_attempts_waiting(
        engine: sa.Engine) -> None:
    record = PostgresProviderRecord(engine)
    stuck, _, _ = declined_invoice(engine, SimulatedGateway(record), attempt_status="unknown")
    waiting, waiting_sub, _ = declined_invoice(engine, SimulatedGateway(record), attempt_status="unknown")
    with engine.begin() as conn:  # the stuck attempt is the oldest: without a cursor it came first every tick
        conn.execute(payment_attempts.update().where(payment_attempts.c.invoice_id == stuck)
                     .values(created_at=NOW - timedelta(days=3650)))
    reconciler = PaymentReconciler(engine, ProviderFailingLookupsOf(record, stuck), ManualClock(NOW))

    with pytest.raises(PaymentGatewayError):
        reconciler.run_once(limit=500)
    reconciler.run_once(limit=500)  # the next tick starts after the attempt that failed

    assert [(e.type, e.payload["invoice_id"]) for e in published(engine, waiting_sub)] == [
        ("payment.failed", waiting)]  # its lookup: the provider declined that attempt
