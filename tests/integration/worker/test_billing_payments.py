"""The payment executor against real PostgreSQL and the simulated provider's durable record: attempts are
claimed once, outcomes go to payments.v1 through the outbox, unknown outcomes are looked up before any
retry, and no invoice is charged twice."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters import payment_attempts as payment_attempts_store
from services.billing_worker.entrypoints.executor import PaymentExecutor
from shared.adapters.clock import ManualClock
from shared.adapters.payments.port import PaymentGatewayError
from shared.adapters.payments.simulated import PostgresProviderRecord, SimulatedGateway
from shared.adapters.postgres.schema.billing import billing_audit_log, payment_attempts, simulated_gateway_charges
from shared.adapters.postgres.schema.core import outbox
from shared.contracts import topics
from shared.contracts.messages import (
    ClosePeriod,
    CreateSubscription,
    CustomerDeleted,
    PaymentFailed,
    PaymentSucceeded,
    RetryPayment,
    UpdatePaymentMethod,
)
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def billing(engine) -> Billing:  # type: ignore[no-untyped-def]
    return Billing(engine)


def invoice_for(billing: Billing, payment_method: str | None) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    sub = f"sub_{suffix}"
    billing.send(CreateSubscription(subscription_id=sub, customer_id=f"cus_{suffix}", plan_id="pro",
                                    currency="USD", payment_method_id=payment_method), JAN_1)
    return sub, billing.invoices(sub)[0].invoice_id


def executor(engine: sa.Engine, **options: float) -> PaymentExecutor:
    return PaymentExecutor(engine, SimulatedGateway(PostgresProviderRecord(engine)), ManualClock(JAN_1),
                           lease_s=options.get("lease_s", 60), unknown_backoff_s=options.get("backoff", 0.05))


def attempt_of(engine: sa.Engine, invoice_id: str) -> sa.Row:  # type: ignore[type-arg]
    with engine.connect() as conn:
        return conn.execute(sa.select(payment_attempts).where(payment_attempts.c.invoice_id == invoice_id)).one()


def outcomes_of(engine: sa.Engine, sub: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(outbox.c.event_type).where(
            outbox.c.topic == "payments.v1", outbox.c.message_key == sub).order_by(outbox.c.id)).scalars().all())


def attempt_writes(statements: Statements) -> list[str]:
    """The statements that wrote attempts, but for the withdrawal of paid invoices' attempts not sent yet (one per
    run of outcomes, matching pending attempts only)."""
    return [u for u in statements.updates_of("payment_attempts")
            if "payment_attempts.status in" not in u or "invoice_id = any" not in u]


def charges_of(engine: sa.Engine, invoice_id: str) -> list[bool]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(simulated_gateway_charges.c.succeeded).where(
            simulated_gateway_charges.c.invoice_id == invoice_id)).scalars().all())


def test_a_finalised_invoice_is_charged_and_the_success_goes_to_payments_v1(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, invoice_id = invoice_for(billing, "pm_card_visa")
    executor(engine).run_once()
    attempt = attempt_of(engine, invoice_id)
    assert (attempt.status, attempt.dispatch_count, attempt.provider_ref.startswith("pi_sim_")) == (
        "succeeded", 1, True)
    assert outcomes_of(engine, sub) == ["payment.succeeded"]
    assert charges_of(engine, invoice_id) == [True]


def test_a_hard_decline_is_reported_as_a_failed_payment_with_its_code(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, invoice_id = invoice_for(billing, "pm_card_chargeDeclinedStolenCard")
    executor(engine).run_once()
    attempt = attempt_of(engine, invoice_id)
    assert (attempt.status, attempt.decline_code, attempt.hard_decline) == ("declined", "stolen_card", True)
    assert outcomes_of(engine, sub) == ["payment.failed"]


def test_without_a_payment_method_the_attempt_fails_without_calling_the_provider(billing: Billing,
                                                                                 engine) -> None:  # type: ignore[no-untyped-def]
    sub, invoice_id = invoice_for(billing, None)
    executor(engine).run_once()
    assert attempt_of(engine, invoice_id).decline_code == "payment_method_missing"
    assert charges_of(engine, invoice_id) == []
    assert outcomes_of(engine, sub) == ["payment.failed"]


def test_a_timeout_after_the_provider_charged_is_reconciled_to_one_success_not_charged_again(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, invoice_id = invoice_for(billing, "pm_sim_timeout_after_success")
    run = executor(engine, backoff=0.01)
    run.run_once()
    assert attempt_of(engine, invoice_id).status == "unknown"
    assert outcomes_of(engine, sub) == []
    time.sleep(0.1)
    run.run_once()
    attempt = attempt_of(engine, invoice_id)
    assert (attempt.status, attempt.dispatch_count) == ("succeeded", 2)
    assert charges_of(engine, invoice_id) == [True]
    assert outcomes_of(engine, sub) == ["payment.succeeded"]


def test_an_executor_that_died_mid_call_leaves_the_attempt_to_be_looked_up_after_its_lease(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, invoice_id = invoice_for(billing, "pm_card_visa")
    dead = executor(engine, lease_s=0.2)
    [claimed] = [a for a in dead.claim(500) if a.invoice_id == invoice_id]
    dead.execute(claimed)  # the provider charged; the executor dies before recording it
    executor(engine).run_once()
    assert attempt_of(engine, invoice_id).status == "in_flight"  # its lease still holds: nobody touches it
    time.sleep(0.3)
    executor(engine).run_once()
    attempt = attempt_of(engine, invoice_id)
    assert (attempt.status, attempt.dispatch_count) == ("succeeded", 2)
    assert charges_of(engine, invoice_id) == [True]
    assert outcomes_of(engine, sub) == ["payment.succeeded"]


def test_a_provider_that_keeps_failing_with_server_errors_is_given_up_as_a_soft_processing_error(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, invoice_id = invoice_for(billing, "pm_sim_server_error")
    run = executor(engine, backoff=0.001)
    for _ in range(8):
        run.run_once()
        time.sleep(0.15)
    attempt = attempt_of(engine, invoice_id)
    assert (attempt.status, attempt.decline_code, attempt.hard_decline) == ("declined", "processing_error", False)
    assert charges_of(engine, invoice_id) == []
    assert outcomes_of(engine, sub) == ["payment.failed"]


def test_many_charges_run_in_flight_at_once_on_the_background_thread(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    invoices = [invoice_for(billing, "pm_card_visa")[1] for _ in range(20)]
    background = executor(engine)
    background.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(attempt_of(engine, i).status != "succeeded" for i in invoices):
            time.sleep(0.1)
    finally:
        background.stop()
    assert [attempt_of(engine, i).status for i in invoices] == ["succeeded"] * 20


def test_a_deleted_provider_customer_leaves_the_subscription_without_a_method_so_its_next_charge_asks_for_one(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, invoice_id = invoice_for(billing, "pm_card_visa")
    deleted = CustomerDeleted(subscription_id=sub, customer_id=billing.subscription(sub).customer_id,
                              stripe_customer_id="cus_stripe_gone", deleted_at=JAN_1)

    envelope = billing.send(deleted, JAN_1)

    assert billing.subscription(sub).payment_method_id is None
    assert (billing.outcome(envelope).status, billing.outcome(envelope).result["previous_payment_method_id"]) == (
        "applied", "pm_card_visa")
    with engine.connect() as conn:
        audit = conn.execute(sa.select(billing_audit_log.c.action, billing_audit_log.c.detail).where(
            billing_audit_log.c.subscription_id == sub, billing_audit_log.c.action == "payment_method.removed")).one()
        announced = conn.execute(sa.select(outbox.c.event_type).where(
            outbox.c.topic == topics.BILLING_EVENTS, outbox.c.message_key == sub,
            outbox.c.event_type == "payment_method.removed")).scalars().all()
    assert (audit.detail["reason"], audit.detail["stripe_customer_id"]) == ("customer_deleted", "cus_stripe_gone")
    assert announced == ["payment_method.removed"]
    # The start invoice's charge had not been dispatched: it fails for the missing method, the provider untouched.
    executor(engine).run_once()
    assert attempt_of(engine, invoice_id).decline_code == "payment_method_missing"
    assert charges_of(engine, invoice_id) == []
    assert outcomes_of(engine, sub) == ["payment.failed"]


def test_the_same_customer_deletion_read_again_does_not_remove_a_card_attached_since(billing: Billing) -> None:
    sub, _ = invoice_for(billing, "pm_card_visa")
    deleted = CustomerDeleted(subscription_id=sub, customer_id=billing.subscription(sub).customer_id,
                              stripe_customer_id="cus_stripe_gone", deleted_at=JAN_1)
    envelope = billing.send(deleted, JAN_1)
    billing.send(UpdatePaymentMethod(subscription_id=sub, customer_id=deleted.customer_id,
                                     payment_method_id="pm_card_mastercard"), JAN_1)

    with billing.engine.begin() as conn:  # the topic read again from the start: the same envelope
        billing.bus.handle(billing.unit_of_work(conn), [(envelope, deleted)], JAN_1)

    assert billing.subscription(sub).payment_method_id == "pm_card_mastercard"
    assert billing.outcome(envelope).status == "applied"


def paid_out_of_band_then_retried(billing: Billing, engine: sa.Engine, gateway: SimulatedGateway) -> tuple[str, str]:
    """A soft decline, then the customer pays the invoice's PaymentIntent on the provider's page (no webhook
    reaches us), then dunning's scheduled retry arrives: the situation the executor must not misread."""
    sub, invoice_id = invoice_for(billing, "pm_card_chargeDeclined")
    PaymentExecutor(engine, gateway, ManualClock(JAN_1)).run_once()
    first = attempt_of(engine, invoice_id)
    assert first.status == "declined"
    gateway.pay_out_of_band(first.provider_ref)
    billing.send(RetryPayment(subscription_id=sub, customer_id="cus_" + sub.removeprefix("sub_"), invoice_id=invoice_id,
                              attempt_no=2), JAN_1 + timedelta(days=3))
    return sub, invoice_id


def test_a_retry_of_an_invoice_paid_out_of_band_settles_as_that_payment_not_as_a_hard_decline(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    gateway = SimulatedGateway(PostgresProviderRecord(engine))
    sub, invoice_id = paid_out_of_band_then_retried(billing, engine, gateway)
    PaymentExecutor(engine, gateway, ManualClock(JAN_1 + timedelta(days=3))).run_once()
    with engine.connect() as conn:
        attempts = conn.execute(sa.select(payment_attempts.c.status, payment_attempts.c.hard_decline,
                                          payment_attempts.c.provider_ref)
                                .where(payment_attempts.c.invoice_id == invoice_id)
                                .order_by(payment_attempts.c.attempt_no)).all()
    assert [(a.status, a.hard_decline) for a in attempts] == [("declined", False), ("succeeded", False)]
    assert attempts[0].provider_ref == attempts[1].provider_ref
    assert outcomes_of(engine, sub) == ["payment.failed", "payment.succeeded"]
    assert charges_of(engine, invoice_id) == [False, True]  # the provider took one payment, the customer's own


class LookupDown(SimulatedGateway):
    def lookup(self, **_: object) -> None:
        raise PaymentGatewayError("provider unreachable")


def test_when_the_lookup_after_a_refused_confirmation_fails_the_attempt_is_unknown_and_looked_up_later(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    record = PostgresProviderRecord(engine)
    sub, invoice_id = paid_out_of_band_then_retried(billing, engine, SimulatedGateway(record))
    PaymentExecutor(engine, LookupDown(record), ManualClock(JAN_1), unknown_backoff_s=0.01).run_once()
    assert [a.status for a in attempts_of(engine, invoice_id)] == ["declined", "unknown"]
    assert outcomes_of(engine, sub) == ["payment.failed"]  # no hard decline was reported
    time.sleep(0.1)
    PaymentExecutor(engine, SimulatedGateway(record), ManualClock(JAN_1), unknown_backoff_s=0.01).run_once()
    assert [a.status for a in attempts_of(engine, invoice_id)] == ["declined", "succeeded"]
    assert outcomes_of(engine, sub) == ["payment.failed", "payment.succeeded"]


def attempts_of(engine: sa.Engine, invoice_id: str) -> list[sa.Row]:  # type: ignore[type-arg]
    with engine.connect() as conn:
        return list(conn.execute(sa.select(payment_attempts).where(payment_attempts.c.invoice_id == invoice_id)
                                 .order_by(payment_attempts.c.attempt_no)).all())


def test_a_round_of_successes_and_declines_is_stored_set_based_each_with_its_own_outcome(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    paid = [invoice_for(billing, "pm_card_visa") for _ in range(5)]
    declined = [invoice_for(billing, "pm_card_chargeDeclinedInsufficientFunds") for _ in range(3)]
    taken_over = invoice_for(billing, "pm_card_visa")
    ours = executor(engine)
    claimed = ours.claim(500)
    settled = [ours.execute(a) for a in claimed]
    with engine.begin() as conn:  # its lease expired and another executor took it meanwhile
        conn.execute(sa.update(payment_attempts).where(payment_attempts.c.invoice_id == taken_over[1])
                     .values(claimed_by="executor-other"))
    ours._record(settled)
    for sub, invoice_id in paid:
        assert (attempt_of(engine, invoice_id).status, outcomes_of(engine, sub)) == ("succeeded", ["payment.succeeded"])
    for sub, invoice_id in declined:
        attempt = attempt_of(engine, invoice_id)
        assert (attempt.status, attempt.decline_code, outcomes_of(engine, sub)) == (
            "declined", "insufficient_funds", ["payment.failed"])
    assert (attempt_of(engine, taken_over[1]).status, outcomes_of(engine, taken_over[0])) == ("in_flight", [])


def test_a_charge_still_rate_limited_after_the_retries_is_released_for_later_never_declined(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    from shared.adapters.payments.rate_limit import RateLimitedGateway, TokenBucket

    sub, invoice_id = invoice_for(billing, "pm_card_visa")
    provider = SimulatedGateway(PostgresProviderRecord(engine), rate_limit_per_s=0.5)  # no token for 4 s
    provider._limiter.try_take(0.5)  # type: ignore[union-attr]  # the account's budget is spent
    gateway = RateLimitedGateway(provider, TokenBucket(1000), calls_for_charge=provider.calls_for_charge,
                                 max_rate_limited_retries=1, sleep=lambda s: None)
    PaymentExecutor(engine, gateway, ManualClock(JAN_1)).run_once()
    attempt = attempt_of(engine, invoice_id)
    assert (attempt.status, attempt.dispatch_count, attempt.decline_code) == ("pending", 0, None)
    assert "rate limit" in attempt.error_message
    assert (outcomes_of(engine, sub), charges_of(engine, invoice_id), gateway.rate_limited_answers) == ([], [], 2)


class Statements:
    """The SQL statements the engine runs while counting (text, lower-cased)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.seen: list[str] = []

    def _record(self, conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(" ".join(statement.lower().split()))

    def __enter__(self) -> Statements:
        sa.event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)

    def updates_of(self, table: str) -> list[str]:
        return [s for s in self.seen if s.startswith(f"update {table} ")]


def test_the_executors_own_outcomes_are_applied_without_writing_their_settled_attempts_again(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    paid_sub, paid = invoice_for(billing, "pm_card_visa")
    declined_sub, declined = invoice_for(billing, "pm_card_chargeDeclinedInsufficientFunds")
    executor(engine).run_once()
    ok, ko = attempt_of(engine, paid), attempt_of(engine, declined)
    assert (ok.status, ko.status) == ("succeeded", "declined")

    with Statements(engine) as statements:
        billing.send_batch([PaymentSucceeded(
            subscription_id=paid_sub, invoice_id=paid, attempt_id=ok.attempt_id, provider_ref=ok.provider_ref,
            amount_minor=ok.amount_minor, currency="USD", source="executor", paid_at=JAN_1)], JAN_1)
        billing.send_batch([PaymentFailed(
            subscription_id=declined_sub, invoice_id=declined, attempt_id=ko.attempt_id,
            amount_minor=ko.amount_minor, currency="USD", decline_code="insufficient_funds", source="executor",
            failed_at=JAN_1)], JAN_1)

    # each attempt read with its batch, none written again (the executor settled them); the paid invoice's
    # attempts not sent yet are withdrawn (one statement that matches pending attempts only)
    assert attempt_writes(statements) == []
    assert [i.status for i in billing.invoices(paid_sub)] == ["paid"]
    assert billing.subscription(declined_sub).status == "past_due"
    assert (attempt_of(engine, paid).status, attempt_of(engine, declined).status) == ("succeeded", "declined")


def test_a_success_reported_by_a_webhook_on_a_declined_attempt_still_wins_and_pays_the_invoice(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, invoice_id = invoice_for(billing, "pm_card_chargeDeclinedInsufficientFunds")
    executor(engine).run_once()
    declined = attempt_of(engine, invoice_id)
    assert declined.status == "declined"

    with Statements(engine) as statements:
        billing.send(PaymentSucceeded(subscription_id=sub, invoice_id=invoice_id, attempt_id=declined.attempt_id,
                                      provider_ref="pi_from_webhook", amount_minor=declined.amount_minor,
                                      currency="USD", source="webhook", paid_at=JAN_1), JAN_1)

    assert len(attempt_writes(statements)) == 1
    attempt = attempt_of(engine, invoice_id)
    assert (attempt.status, attempt.provider_ref) == ("succeeded", "pi_from_webhook")
    assert [i.status for i in billing.invoices(sub)] == ["paid"]


def test_an_invoice_paid_by_a_webhook_withdraws_its_retry_not_sent_yet_in_the_same_transaction(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, invoice_id = invoice_for(billing, "pm_card_chargeDeclinedInsufficientFunds")
    executor(engine).run_once()
    declined = attempt_of(engine, invoice_id)
    billing.send(RetryPayment(subscription_id=sub, customer_id="cus_" + sub.removeprefix("sub_"),
                              invoice_id=invoice_id, attempt_no=2), JAN_1 + timedelta(days=3))

    billing.send(PaymentSucceeded(subscription_id=sub, invoice_id=invoice_id, attempt_id=declined.attempt_id,
                                  provider_ref="pi_from_webhook", amount_minor=declined.amount_minor,
                                  currency="USD", source="webhook", paid_at=JAN_1), JAN_1 + timedelta(days=3))

    with engine.connect() as conn:  # no executor ran: the paid invoice's own commit withdrew the retry
        statuses = conn.execute(sa.select(payment_attempts.c.status).where(
            payment_attempts.c.invoice_id == invoice_id).order_by(payment_attempts.c.attempt_no)).scalars().all()
    assert statuses == ["succeeded", "cancelled"]
    assert [i.status for i in billing.invoices(sub)] == ["paid"]


def _executor_successes(billing: Billing, engine: sa.Engine, count: int) -> list[PaymentSucceeded]:
    """`count` new invoices charged by the executor, as the payment.succeeded messages it queued for them."""
    subs = [invoice_for(billing, "pm_card_visa") for _ in range(count)]
    executor(engine).run_once()
    out = []
    for sub, invoice_id in subs:
        attempt = attempt_of(engine, invoice_id)
        out.append(PaymentSucceeded(
            subscription_id=sub, invoice_id=invoice_id, attempt_id=attempt.attempt_id,
            provider_ref=attempt.provider_ref, amount_minor=attempt.amount_minor, currency="USD", source="executor",
            paid_at=JAN_1 + timedelta(hours=1)))
    return out


def test_a_run_of_payment_outcomes_is_applied_in_the_same_statements_whatever_its_size(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    seen = {}
    for count in (3, 6):
        outcomes = _executor_successes(billing, engine, count)
        with Statements(engine) as statements:
            billing.send_batch(list(outcomes), JAN_1)
        seen[count] = statements.seen
        for p in outcomes:
            [invoice] = billing.invoices(str(p.subscription_id))
            assert (invoice.status, invoice.provider_ref, invoice.amount_paid_minor, invoice.paid_at) == (
                "paid", p.provider_ref, p.amount_minor, JAN_1 + timedelta(hours=1))

    # one UPDATE of invoices and one read of credit purchases per run, none per outcome; subscriptions untouched
    assert len(seen[3]) == len(seen[6])
    for statements_of_run in seen.values():
        assert len([s for s in statements_of_run if s.startswith("update invoices ")]) == 1
        assert len([s for s in statements_of_run if "from credit_purchases" in s]) == 1
        assert [s for s in statements_of_run if s.startswith("update subscriptions ")] == []


def test_two_open_invoices_paid_in_one_run_reactivate_their_past_due_subscription(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, first = invoice_for(billing, "pm_card_chargeDeclinedInsufficientFunds")
    customer = billing.subscription(sub).customer_id
    executor(engine).run_once()
    declined = attempt_of(engine, first)
    billing.send(PaymentFailed(subscription_id=sub, invoice_id=first, attempt_id=declined.attempt_id,
                               amount_minor=declined.amount_minor, currency="USD", decline_code="insufficient_funds",
                               source="executor", failed_at=JAN_1), JAN_1)
    assert billing.subscription(sub).status == "past_due"
    feb_1 = datetime(2026, 2, 1, tzinfo=UTC)
    billing.send(ClosePeriod(subscription_id=sub, customer_id=customer, period_end=feb_1), feb_1)
    second = billing.invoices(sub)[1]
    assert [i.status for i in billing.invoices(sub)] == ["open", "open"]

    # the card on file was fixed; both are paid (e.g. by webhooks) and applied in one run: the first one's row still
    # says open while the second is applied (written at commit), yet the subscription is reactivated
    billing.send_batch([
        PaymentSucceeded(subscription_id=sub, invoice_id=first, provider_ref="pi_first", amount_minor=900,
                         currency="USD", source="webhook", paid_at=feb_1),
        PaymentSucceeded(subscription_id=sub, invoice_id=second.invoice_id, provider_ref="pi_second",
                         amount_minor=second.amount_due_minor, currency="USD", source="webhook", paid_at=feb_1)],
        feb_1)

    assert [(i.status, i.provider_ref) for i in billing.invoices(sub)] == [("paid", "pi_first"),
                                                                          ("paid", "pi_second")]
    assert billing.subscription(sub).status == "active"


def test_the_running_executor_sweeps_attempts_of_closed_invoices_once_per_period_not_every_round(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    _sub, invoice_id = invoice_for(billing, "pm_card_visa")
    with engine.begin() as conn:  # paid meanwhile where the executor did not see it (e.g. the hosted page)
        conn.execute(sa.text("UPDATE invoices SET status = 'paid', paid_at = now(), amount_paid_minor = "
                             "amount_due_minor WHERE invoice_id = :i"), {"i": invoice_id})
    running = PaymentExecutor(engine, SimulatedGateway(PostgresProviderRecord(engine)), ManualClock(JAN_1),
                              poll_s=0.02, withdraw_every_s=3600)
    with Statements(engine) as statements:
        running.start()
        try:
            deadline = time.monotonic() + 30
            while attempt_of(engine, invoice_id).status != "cancelled" and time.monotonic() < deadline:
                time.sleep(0.05)
            rounds_then = len([s for s in statements.seen if "order by a.created_at limit" in s])
            while len([s for s in statements.seen if "order by a.created_at limit" in s]) < rounds_then + 5 \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            running.stop()

    assert attempt_of(engine, invoice_id).status == "cancelled"  # the first round's sweep withdrew it
    assert charges_of(engine, invoice_id) == []
    sweeps = [s for s in statements.seen if s.startswith("update payment_attempts a set status = 'cancelled'")]
    assert len(sweeps) == 1  # five more rounds claimed, none swept again


def test_a_claim_looks_past_a_queue_head_it_cannot_take(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    executor(engine).run_once()  # nothing else left pending in this schema
    held = [invoice_for(billing, "pm_card_visa")[1] for _ in range(40)]  # older than the window of a 1-row claim
    _sub, due = invoice_for(billing, "pm_card_visa")
    with engine.begin() as conn:  # paid meanwhile: their pending attempts can never be claimed (not swept yet)
        conn.execute(sa.text("UPDATE invoices SET status = 'paid', paid_at = now(), amount_paid_minor = "
                             "amount_due_minor WHERE invoice_id = ANY(:ids)"), {"ids": held})

    with engine.begin() as conn:
        claimed = payment_attempts_store.claim_due(conn, limit=1, claimant="test", lease_s=60)

    assert [c.invoice_id for c in claimed] == [due]
    assert {attempt_of(engine, i).status for i in held} == {"pending"}
