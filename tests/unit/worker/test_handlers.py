"""The billing worker's use cases through the real bootstrap's handler table and message bus, against a
`FakeUnitOfWork` (no PostgreSQL, no Kafka). The same scenarios run on PostgreSQL in
tests/integration/worker/test_billing_*.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.billing_worker.bootstrap import billing_handlers, message_bus
from services.billing_worker.service_layer.messagebus import MessageRejected
from shared.adapters.catalog_file import load_default_catalog
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import (
    TYPE_OF,
    CancelSubscription,
    ChangePlan,
    ClosePeriod,
    CreateSubscription,
    CustomerDeleted,
    EndTrial,
    ExpireCredits,
    GiveUpDunning,
    GrantCredits,
    PauseSubscription,
    Payload,
    PaymentFailed,
    PaymentSucceeded,
    ResumeSubscription,
    RetryPayment,
    UpdatePaymentMethod,
)
from shared.domain.ids import attempt_id_for
from shared.domain.invoice import Invoice, InvoiceStatus
from shared.domain.subscription import SubscriptionStatus
from tests.unit.worker.fakes import FakeBillingStore, FakeUnitOfWork

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
MAR_1 = datetime(2026, 3, 1, tzinfo=UTC)
CATALOG = load_default_catalog()


class Worker:
    """The worker's message bus over one fake store, fed as the batch processor does."""

    def __init__(self) -> None:
        self.store = FakeBillingStore()
        self.bus = message_bus(billing_handlers())

    def send(self, payload: Payload, at: datetime) -> Envelope:
        [envelope] = self.send_batch([payload], at)
        return envelope

    def send_batch(self, payloads: Sequence[Payload], at: datetime) -> list[Envelope]:
        envelopes = [new_envelope(TYPE_OF[type(p)], p.model_dump(mode="json"), producer="test", occurred_at=at)
                     for p in payloads]
        self.replay(envelopes, payloads, at)
        return envelopes

    def replay(self, envelopes: Sequence[Envelope], payloads: Sequence[Payload], at: datetime) -> None:
        self.bus.handle(FakeUnitOfWork(CATALOG, self.store), list(zip(envelopes, payloads, strict=True)), at)

    def outcome(self, envelope: Envelope) -> tuple[str, str | None]:
        found = self.store.outcomes[envelope.event_id]
        return found["status"], found["error_code"]

    def result(self, envelope: Envelope) -> dict[str, Any]:
        return dict(self.store.outcomes[envelope.event_id]["result"])

    def subscribe(self, sub: str = "sub_1", plan: str = "pro", **extra: Any) -> str:
        extra = {"payment_method_id": "pm_card_visa", **extra}
        envelope = self.send(CreateSubscription(subscription_id=sub, customer_id=f"cus_{sub}", plan_id=plan,
                                                currency="USD", **extra), JAN_1)
        assert self.outcome(envelope) == ("applied", None)
        return sub

    def status(self, sub: str) -> SubscriptionStatus:
        return self.store.subscriptions[sub].subscription.status

    def invoices(self, sub: str) -> list[Invoice]:
        return self.store.invoices_of(sub)

    def attempts(self, invoice_id: str) -> list[dict[str, Any]]:
        return sorted((a for a in self.store.attempts.values() if a["invoice_id"] == invoice_id),
                      key=lambda a: a["attempt_no"])


@pytest.fixture
def worker() -> Worker:
    return Worker()


# --------------------------------------------------------------------------------------- lifecycle


def test_a_new_subscription_is_stored_invoiced_with_a_pending_attempt_and_announced(worker: Worker) -> None:
    envelope = worker.send(CreateSubscription(subscription_id="sub_1", customer_id="cus_1", plan_id="pro",
                                              currency="USD", payment_method_id="pm_card_visa"), JAN_1)

    assert worker.outcome(envelope) == ("applied", None)
    result = worker.result(envelope)
    assert (result["status"], result["plan_id"], result["current_period_end"]) == ("active", "pro", FEB_1.isoformat())
    [invoice] = worker.invoices("sub_1")
    assert (invoice.status, invoice.total.amount_minor, result["invoice_id"]) == (InvoiceStatus.OPEN, 900, invoice.id)
    assert [(a["attempt_no"], a["status"], a["amount_minor"]) for a in worker.attempts(invoice.id)] == [
        (1, "pending", 900)]
    assert [e.payload["new_status"] for e in worker.store.events("subscription.status_changed")] == ["active"]
    assert [e.payload["invoice_id"] for e in worker.store.events("invoice.finalized")] == [invoice.id]


def test_a_repeated_create_alone_in_its_run_is_rejected_as_already_exists_like_one_in_a_batch(
        worker: Worker) -> None:
    sub = worker.subscribe()
    again = CreateSubscription(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="pro", currency="USD",
                               payment_method_id="pm_card_visa")

    alone = worker.send(again, JAN_16)
    [in_a_batch, other] = worker.send_batch(
        [again, CreateSubscription(subscription_id="sub_2", customer_id="cus_sub_2", plan_id="pro", currency="USD")],
        JAN_16)

    assert worker.outcome(alone) == worker.outcome(in_a_batch) == ("rejected", "already_exists")
    assert worker.outcome(other) == ("applied", None)
    assert len(worker.invoices(sub)) == 1


def test_a_subscription_in_a_currency_its_plan_is_not_sold_in_is_rejected_and_nothing_is_stored(
        worker: Worker) -> None:
    envelope = worker.send(CreateSubscription(subscription_id="sub_1", customer_id="cus_1", plan_id="pro",
                                              currency="EUR"), JAN_1)

    assert worker.outcome(envelope) == ("rejected", "currency_mismatch")
    assert worker.store.outcomes[envelope.event_id]["error_detail"] == "plan pro is sold in USD, not EUR"
    assert worker.store.subscriptions == {} and worker.store.invoices == {} and worker.store.outbox == {}


def test_a_command_for_an_unknown_subscription_is_rejected_as_not_found(worker: Worker) -> None:
    envelope = worker.send(CancelSubscription(subscription_id="sub_nobody", customer_id="cus_1"), JAN_16)

    assert worker.outcome(envelope) == ("rejected", "not_found")


def test_a_run_with_a_refused_command_midway_applies_the_others_and_answers_each(worker: Worker) -> None:
    subs = [worker.subscribe(sub) for sub in ("sub_a", "sub_b", "sub_c")]
    commits = worker.store.commits
    cancels = [CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}", reason=f"#{n}")
               for n, sub in enumerate(("sub_a", "sub_b", "sub_a", "sub_c"))]

    envelopes = worker.send_batch(cancels, JAN_16)

    assert [worker.outcome(e) for e in envelopes] == [
        ("applied", None), ("applied", None), ("rejected", "invalid_transition"), ("applied", None)]
    assert [worker.store.subscriptions[s].subscription.cancel_reason for s in subs] == ["#0", "#1", "#3"]
    # the two before the refusal together again, the refusal alone (its outcome), the rest together
    assert worker.store.commits == commits + 3


def test_a_command_read_again_is_not_applied_twice(worker: Worker) -> None:
    sub = worker.subscribe()
    envelope = worker.send(PauseSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), JAN_16)
    events = len(worker.store.outbox)

    worker.replay([envelope], [PauseSubscription(subscription_id=sub, customer_id=f"cus_{sub}")], JAN_16)

    assert worker.outcome(envelope) == ("applied", None)
    assert len(worker.store.outbox) == events


def test_cancelling_now_cancels_with_its_reason_and_cancelling_again_is_rejected(worker: Worker) -> None:
    sub = worker.subscribe()

    first = worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}", reason="too expensive"),
                        JAN_16)
    second = worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), JAN_16)

    assert worker.outcome(first) == ("applied", None)
    assert worker.outcome(second) == ("rejected", "invalid_transition")
    state = worker.store.subscriptions[sub].subscription
    assert (state.status, state.cancel_reason) == (SubscriptionStatus.CANCELLED, "too expensive")


def test_cancelling_at_period_end_keeps_the_subscription_active_until_then(worker: Worker) -> None:
    sub = worker.subscribe()

    envelope = worker.send(CancelSubscription(subscription_id=sub, customer_id=f"cus_{sub}", at_period_end=True),
                           JAN_16)

    assert worker.result(envelope)["cancel_at_period_end"] is True
    state = worker.store.subscriptions[sub]
    assert (state.subscription.status, state.subscription.cancel_reason) == (SubscriptionStatus.ACTIVE, None)


def test_pause_then_resume_records_when_it_was_paused_and_forgets_it_on_resume(worker: Worker) -> None:
    sub = worker.subscribe()

    worker.send(PauseSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), JAN_16)
    paused = worker.store.subscriptions[sub]
    worker.send(ResumeSubscription(subscription_id=sub, customer_id=f"cus_{sub}"), JAN_16 + timedelta(days=2))

    assert (paused.subscription.status, paused.subscription.paused_at) == (SubscriptionStatus.PAUSED, JAN_16)
    resumed = worker.store.subscriptions[sub]
    assert (resumed.subscription.status, resumed.subscription.paused_at) == (SubscriptionStatus.ACTIVE, None)
    assert [e.payload["new_status"] for e in worker.store.events("subscription.status_changed")] == [
        "active", "paused", "active"]


def test_an_upgrade_mid_period_invoices_only_the_prorated_difference(worker: Worker) -> None:
    sub = worker.subscribe(plan="basic_monthly", trial_days=0)
    half_of_january = JAN_1 + (FEB_1 - JAN_1) / 2

    envelope = worker.send(ChangePlan(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="premium_monthly"),
                           half_of_january)

    _start, change = worker.invoices(sub)
    # Stripe's documented example: USD 10 -> USD 20 exactly halfway gives -5.00 + 10.00 = +5.00.
    assert worker.store.lines(change) == [("proration", -500), ("proration", 1000)]
    assert worker.result(envelope)["invoice_id"] == change.id and worker.result(envelope)["plan_id"] == \
        "premium_monthly"
    assert [a["amount_minor"] for a in worker.attempts(change.id)] == [500]


def test_a_trial_that_ends_with_a_payment_method_starts_the_first_paid_period(worker: Worker) -> None:
    sub = worker.subscribe(plan="basic_monthly")
    trial_end = worker.store.subscriptions[sub].subscription.trial_end
    assert trial_end is not None and worker.invoices(sub) == []

    envelope = worker.send(EndTrial(subscription_id=sub, customer_id=f"cus_{sub}", trial_end=trial_end), trial_end)
    again = worker.send(EndTrial(subscription_id=sub, customer_id=f"cus_{sub}", trial_end=trial_end), trial_end)

    assert worker.outcome(envelope) == ("applied", None) and worker.outcome(again)[0] == "ignored"
    assert worker.status(sub) is SubscriptionStatus.ACTIVE
    [invoice] = worker.invoices(sub)
    assert (invoice.total.amount_minor, worker.result(envelope)["invoice_id"]) == (1000, invoice.id)


# ----------------------------------------------------------------------------------- period close


def test_the_hand_computed_scenario_upgrade_coupon_credits_overage_and_tax_bills_the_same_lines(
        worker: Worker) -> None:
    sub = worker.subscribe(coupon_id="PARTNER10", tax_rate_bps=1000)
    worker.store.record_usage(sub, "inference", 2_000_000, datetime(2026, 1, 5, tzinfo=UTC))
    worker.store.record_usage(sub, "inference", 1_500_000, datetime(2026, 1, 20, tzinfo=UTC))
    worker.store.record_usage(sub, "storage", "1200", datetime(2026, 1, 28, tzinfo=UTC))
    upgrade = worker.send(ChangePlan(subscription_id=sub, customer_id=f"cus_{sub}", plan_id="team"), JAN_16)
    close = worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)

    assert worker.outcome(upgrade) == ("applied", None) and worker.outcome(close) == ("applied", None)
    start, change, period = worker.invoices(sub)
    assert worker.store.lines(start) == [("fee", 900), ("discount", -90), ("tax", 81)]
    assert worker.store.lines(change) == [("proration", -465), ("proration", 1032), ("tax", 57)]
    assert worker.store.lines(period) == [
        ("usage", 350), ("credit", -200), ("usage", 360), ("fee", 2000), ("discount", -251), ("tax", 226)]
    assert period.total.amount_minor == 2485
    state = worker.store.subscriptions[sub].subscription
    assert (state.plan_id, state.current_period.start, state.current_period.end) == ("team", FEB_1, MAR_1)


def test_usage_that_arrives_after_its_period_closed_is_billed_on_the_next_invoice_as_an_adjustment(
        worker: Worker) -> None:
    sub = worker.subscribe()
    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)
    worker.store.record_usage(sub, "inference", 3_000_000, datetime(2026, 1, 30, tzinfo=UTC))  # late

    worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=MAR_1), MAR_1)

    march = worker.invoices(sub)[-1]
    assert ("adjustment", 300) in worker.store.lines(march)


def test_closing_a_period_twice_issues_one_invoice_and_a_close_not_due_is_rejected(worker: Worker) -> None:
    sub = worker.subscribe()
    early = worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), JAN_16)
    first = worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)
    second = worker.send(ClosePeriod(subscription_id=sub, customer_id=f"cus_{sub}", period_end=FEB_1), FEB_1)

    assert [worker.outcome(e) for e in (early, first, second)] == [
        ("rejected", "not_due"), ("applied", None), ("ignored", None)]
    assert [i.key.reason.value for i in worker.invoices(sub)] == ["subscription_start", "period_close"]


def test_a_billing_run_closes_many_periods_in_one_commit_and_answers_the_stale_ones(worker: Worker) -> None:
    subs = [worker.subscribe(f"sub_{i}", plan="team", seats=3) for i in range(20)]
    for sub in subs:
        worker.store.record_usage(sub, "inference", 7_000_000, datetime(2026, 1, 9, tzinfo=UTC))
    stale = ClosePeriod(subscription_id=subs[0], customer_id="cus_x", period_end=JAN_1)
    commits = worker.store.commits

    envelopes = worker.send_batch([ClosePeriod(subscription_id=s, customer_id=f"cus_{s}", period_end=FEB_1)
                                   for s in subs] + [stale], FEB_1)

    assert worker.store.commits == commits + 1
    assert [worker.outcome(e)[0] for e in envelopes] == ["applied"] * 20 + ["ignored"]
    for sub in subs:
        period = worker.invoices(sub)[-1]
        # Team, 3 seats: USD 6 of inference included, 1.00 over; next period's fee 60.00.
        assert worker.store.lines(period) == [("usage", 700), ("credit", -600), ("fee", 6000)]
    numbers = [worker.invoices(s)[-1].number for s in subs]
    assert len(set(numbers)) == 20


# ------------------------------------------------------------------------------------------ credits


def test_granted_credits_are_used_before_overage_and_what_is_left_expires_with_an_event(worker: Worker) -> None:
    sub = worker.subscribe()
    grant = worker.send(GrantCredits(subscription_id=sub, customer_id=f"cus_{sub}", grant_id="promo-1",
                                     meter_id="inference", amount_minor=500, expires_at=JAN_16), JAN_1)
    expire = worker.send(ExpireCredits(subscription_id=sub, customer_id=f"cus_{sub}", at=JAN_16), JAN_16)

    assert worker.result(grant)["grant_id"] == "promo-1"
    assert worker.result(expire)["expired_entries"] == 1
    [granted] = [e for e in worker.store.events("credits.granted") if e.payload["source"] == "promotional"]
    assert (granted.payload["amount_minor"], granted.payload["meter_id"]) == (500, "inference")
    [expired] = worker.store.events("credits.expired")
    assert expired.payload["amount_minor"] == 500


def test_a_grant_needs_exactly_one_of_money_or_units(worker: Worker) -> None:
    sub = worker.subscribe()

    envelope = worker.send(GrantCredits(subscription_id=sub, customer_id=f"cus_{sub}", grant_id="g",
                                        meter_id="inference", amount_minor=100, units=Decimal(5)), JAN_1)

    assert worker.outcome(envelope) == ("rejected", "invalid_amount")


# ----------------------------------------------------------------------------------------- payments


def first_invoice(worker: Worker, sub: str) -> Invoice:
    [invoice] = worker.invoices(sub)
    return invoice


def failed(sub: str, invoice: Invoice, attempt_no: int = 1, **extra: Any) -> PaymentFailed:
    return PaymentFailed(subscription_id=sub, invoice_id=invoice.id, attempt_id=attempt_id_for(invoice.id, attempt_no),
                         amount_minor=invoice.total.amount_minor, currency="USD", decline_code="insufficient_funds",
                         failed_at=JAN_1, **extra)


def test_a_failed_payment_makes_the_subscription_past_due_and_a_later_success_reactivates_it(
        worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)

    worker.send(failed(sub, invoice), JAN_1)
    assert worker.status(sub) is SubscriptionStatus.PAST_DUE
    [announced] = worker.store.events("invoice.payment_failed")
    assert (announced.payload["attempt_no"], announced.payload["decline_code"]) == (1, "insufficient_funds")
    assert worker.attempts(invoice.id)[0]["status"] == "declined"

    worker.send(RetryPayment(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice.id, attempt_no=2),
                JAN_1 + timedelta(days=3))
    worker.send(PaymentSucceeded(subscription_id=sub, invoice_id=invoice.id, attempt_id=attempt_id_for(invoice.id, 2),
                                 provider_ref="pi_2", amount_minor=900, currency="USD",
                                 paid_at=JAN_1 + timedelta(days=3)), JAN_1 + timedelta(days=3))

    assert worker.status(sub) is SubscriptionStatus.ACTIVE
    assert first_invoice(worker, sub).status is InvoiceStatus.PAID
    assert [(a["attempt_no"], a["status"]) for a in worker.attempts(invoice.id)] == [(1, "declined"), (2, "succeeded")]
    assert [e.payload["invoice_id"] for e in worker.store.events("invoice.paid")] == [invoice.id]
    # payment outcomes are reports, not commands: nobody waits for an answer
    assert {o["command_type"] for o in worker.store.outcomes.values()} == {"subscription.create", "payment.retry"}


def test_a_second_successful_charge_of_a_paid_invoice_marks_it_paid_once(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    paid = {"subscription_id": sub, "invoice_id": invoice.id, "amount_minor": 900, "currency": "USD", "paid_at": JAN_1}

    worker.send(PaymentSucceeded(provider_ref="pi_1", **paid), JAN_1)
    worker.send(PaymentSucceeded(provider_ref="pi_other", **paid), JAN_16)

    assert len(worker.store.events("invoice.paid")) == 1
    assert worker.store.invoices[invoice.id][1].provider_ref == "pi_1"


def test_a_second_successful_charge_of_a_paid_invoice_is_audited_for_a_refund(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    paid = {"subscription_id": sub, "invoice_id": invoice.id, "amount_minor": 900, "currency": "USD", "paid_at": JAN_1}

    worker.send(PaymentSucceeded(provider_ref="pi_1", **paid), JAN_1)
    worker.send(PaymentSucceeded(provider_ref="pi_other", **paid), JAN_1)

    [audit] = [a for a in worker.store.audit if a["action"] == "payment.duplicate"]
    assert audit["detail"] == {"provider_ref": "pi_other", "paid_ref": "pi_1"}


def test_a_payment_for_an_unknown_invoice_is_refused_for_the_dead_letter_queue(worker: Worker) -> None:
    sub = worker.subscribe()
    with pytest.raises(MessageRejected) as refused:
        worker.send(PaymentSucceeded(subscription_id=sub, invoice_id="inv_nowhere", amount_minor=1, currency="USD",
                                     paid_at=JAN_1), JAN_1)
    assert refused.value.code == "unknown_invoice"


def test_dunning_giving_up_makes_the_invoice_uncollectible_cancels_the_subscription_and_its_pending_attempts(
        worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)

    envelope = worker.send(GiveUpDunning(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice.id),
                           JAN_16)

    assert worker.outcome(envelope) == ("applied", None)
    assert first_invoice(worker, sub).status is InvoiceStatus.UNCOLLECTIBLE
    state = worker.store.subscriptions[sub].subscription
    assert (state.status, state.cancel_reason) == (SubscriptionStatus.CANCELLED, "dunning_gave_up")
    assert [a["status"] for a in worker.attempts(invoice.id)] == ["cancelled"]


def test_a_retry_of_an_invoice_already_paid_is_ignored(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    worker.send(PaymentSucceeded(subscription_id=sub, invoice_id=invoice.id, amount_minor=900, currency="USD",
                                 paid_at=JAN_1), JAN_1)

    envelope = worker.send(RetryPayment(subscription_id=sub, customer_id=f"cus_{sub}", invoice_id=invoice.id,
                                        attempt_no=2), JAN_16)

    assert worker.outcome(envelope)[0] == "ignored" and len(worker.attempts(invoice.id)) == 1


# ---------------------------------------------------------------------------------------- customers


def test_a_deleted_customer_loses_its_payment_method_and_pending_charges_their_method(worker: Worker) -> None:
    sub = worker.subscribe()
    invoice = first_invoice(worker, sub)
    deleted = CustomerDeleted(subscription_id=sub, customer_id=f"cus_{sub}", stripe_customer_id="cus_stripe",
                              deleted_at=JAN_16)

    envelope = worker.send(deleted, JAN_16)
    again = worker.send(deleted, JAN_16)

    result = worker.result(envelope)
    assert (result["previous_payment_method_id"], result["pending_attempts_detached"]) == ("pm_card_visa", 1)
    assert worker.outcome(again)[0] == "ignored"
    assert worker.store.subscriptions[sub].subscription.payment_method_id is None
    assert worker.attempts(invoice.id)[0]["payment_method_id"] is None
    assert [e.payload["reason"] for e in worker.store.events("payment_method.removed")] == ["customer_deleted"]


def test_a_new_payment_method_is_kept_and_announced(worker: Worker) -> None:
    sub = worker.subscribe()

    worker.send(UpdatePaymentMethod(subscription_id=sub, customer_id=f"cus_{sub}", payment_method_id="pm_card_new"),
                JAN_16)

    assert worker.store.subscriptions[sub].subscription.payment_method_id == "pm_card_new"
    assert [e.payload["payment_method_id"] for e in worker.store.events("payment_method.updated")] == ["pm_card_new"]


def test_every_message_type_the_worker_consumes_has_a_handler_in_the_bootstrap_table() -> None:
    consumed = {"subscription.create", "subscription.change_plan", "subscription.change_seats",
                "subscription.cancel", "subscription.pause", "subscription.resume", "period.close", "trial.end",
                "credits.expire", "credits.grant", "payment.retry", "payment_method.update", "dunning.give_up",
                "payment.succeeded", "payment.failed", "payment.customer_deleted",
                "subscription.cancel_scheduled_change", "subscription.revoke_cancellation"}
    consumed |= {"credit_note.issue", "invoice.finalize"}
    consumed |= {"invoice.void", "invoice.mark_uncollectible", "invoice.create_one_off"}
    consumed |= {"credits.void_grant", "credits.purchase", "credits.check_recharge"}
    assert set(billing_handlers()) == consumed
    with pytest.raises(ValueError, match=r"subscription\.cancle"):
        message_bus({"subscription.cancle": billing_handlers()["subscription.cancel"]})


def test_a_signup_counts_a_coupons_redemptions_only_when_the_coupon_has_a_limit(
        worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    # Counting reads every attachment of the coupon: for an unlimited one it decided nothing and made each
    # signup dearer than the one before.
    counted: list[str] = []
    real = FakeUnitOfWork.coupon_times_redeemed

    def spy(self: FakeUnitOfWork, coupon_id: str) -> int:
        counted.append(coupon_id)
        return real(self, coupon_id)

    monkeypatch.setattr(FakeUnitOfWork, "coupon_times_redeemed", spy)
    unlimited, limited = "FIVE_OFF", "WELCOME20"  # any plan; WELCOME20 has max_redemptions
    assert CATALOG.coupon(unlimited).max_redemptions is None and CATALOG.coupon(limited).max_redemptions
    worker.subscribe("sub_unlimited", coupon_id=unlimited)
    worker.subscribe("sub_limited", coupon_id=limited)
    assert counted == [limited]
    assert {worker.store.subscriptions[s].subscription.coupon.coupon_id  # type: ignore[union-attr]
            for s in ("sub_unlimited", "sub_limited")} == {unlimited, limited}
