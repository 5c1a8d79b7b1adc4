"""The billing handlers against real PostgreSQL: lifecycle outcomes, the hand-computed scenario (mid-period
upgrade, coupon, included credits and overage, tax), identity of invoices and attempts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.billing_repository import audit_invoice_totals
from shared.adapters.postgres.schema.billing import (
    billing_audit_log,
    coupon_redemptions,
    credit_entries,
    payment_attempts,
    subscription_history,
)
from shared.adapters.postgres.schema.core import outbox
from shared.contracts.messages import (
    CancelSubscription,
    ChangePlan,
    ClosePeriod,
    CreateSubscription,
    PauseSubscription,
    PaymentFailed,
    PaymentSucceeded,
    ResumeSubscription,
)
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def billing(engine) -> Billing:  # type: ignore[no-untyped-def]
    return Billing(engine)


def new_ids() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return f"sub_{suffix}", f"cus_{suffix}"


def subscribe(billing: Billing, plan: str = "pro", **extra: object) -> tuple[str, str]:
    sub, cus = new_ids()
    env = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id=plan, currency="USD",
                                          payment_method_id="pm_card_visa", **extra), JAN_1)
    assert billing.outcome(env).status == "applied"
    return sub, cus


def test_pro_with_a_mid_period_upgrade_to_team_a_coupon_credits_and_overage_bills_the_hand_computed_invoices(
        billing: Billing) -> None:
    sub, cus = subscribe(billing, coupon_id="PARTNER10", tax_rate_bps=1000)
    # January usage: USD 3.50 of inference (USD 2.00 included), 1,200 GB-months of storage (1,000 included).
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 2_000_000}, datetime(2026, 1, 5, tzinfo=UTC))
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 1_500_000}, datetime(2026, 1, 20, tzinfo=UTC))
    billing.record_usage(sub, cus, "storage_usage", {"gb_months": "1200"}, datetime(2026, 1, 28, tzinfo=UTC))
    upgrade = billing.send(ChangePlan(subscription_id=sub, customer_id=cus, plan_id="team"), JAN_16)
    close = billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)

    assert billing.outcome(upgrade).status == "applied"
    assert billing.outcome(close).status == "applied"
    start, change, period = billing.invoices(sub)
    # Start: Pro fee 9.00, PARTNER10 10% off fee and usage -0.90, tax 10% of 8.10 = 0.81.
    assert (start.kind, billing.lines(start.invoice_id)) == (
        "subscription_start", [("fee", 900), ("discount", -90), ("tax", 81)])
    assert start.total_minor == 891
    # Upgrade with 16 of 31 days left: -9.00 x 16/31 = -4.65, +20.00 x 16/31 = +10.32, tax 10% of 5.67 = 0.57.
    assert (change.kind, billing.lines(change.invoice_id)) == (
        "subscription_change", [("proration", -465), ("proration", 1032), ("tax", 57)])
    assert change.total_minor == 624
    # Close of January: inference 3.50 less 2.00 of credits, storage 200 GB-months x 0.018 = 3.60, Team fee
    # for February 20.00, 10% off 25.10 = -2.51, tax 10% of 22.59 = 2.26.
    assert (period.kind, billing.lines(period.invoice_id)) == ("period_close", [
        ("usage", 350), ("credit", -200), ("usage", 360), ("fee", 2000), ("discount", -251), ("tax", 226)])
    assert (period.total_minor, period.discount_minor, period.credits_applied_minor, period.tax_minor) == (
        2485, 251, 200, 226)
    # subtotal = the charges before discount, credits and tax (before issue 14: after them, 2259 and 810):
    # 3.50 + 3.60 + 20.00 = 27.10; 27.10 - 2.51 - 2.00 + 2.26 = 24.85.
    assert (period.subtotal_minor, start.subtotal_minor, change.subtotal_minor) == (2710, 900, 567)
    assert period.subtotal_minor - period.discount_minor - period.credits_applied_minor + period.tax_minor == (
        period.total_minor)
    assert [i.number_seq for i in (start, change, period)] == sorted(i.number_seq for i in (start, change, period))
    row = billing.subscription(sub)
    assert (row.plan_id, row.status, row.current_period_start, row.current_period_end) == (
        "team", "active", FEB_1, datetime(2026, 3, 1, tzinfo=UTC))


def test_every_invoice_total_equals_the_sum_of_its_lines(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert audit_invoice_totals(conn) == []


def test_each_charged_invoice_gets_one_payment_attempt_written_before_any_charge(billing: Billing,
                                                                                  engine) -> None:  # type: ignore[no-untyped-def]
    sub, _ = subscribe(billing)
    [invoice] = billing.invoices(sub)
    with engine.connect() as conn:
        attempts = conn.execute(sa.select(payment_attempts).where(payment_attempts.c.invoice_id == invoice.invoice_id)
                                ).all()
    assert [(a.attempt_no, a.status, a.amount_minor, a.idempotency_key == a.attempt_id) for a in attempts] == [
        (1, "pending", 900, True)]


def test_closing_the_same_period_twice_issues_one_invoice_and_ignores_the_second(billing: Billing) -> None:
    sub, cus = subscribe(billing, plan="basic_monthly", trial_days=0)
    first = billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    second = billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    assert (billing.outcome(first).status, billing.outcome(second).status) == ("applied", "ignored")
    assert [i.kind for i in billing.invoices(sub)] == ["subscription_start", "period_close"]


def test_a_billing_run_closes_many_periods_in_one_unit_of_work(billing: Billing) -> None:
    subs = [subscribe(billing, plan="team", seats=3) for _ in range(5)]
    for sub, cus in subs:
        billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 7_000_000}, datetime(2026, 1, 9, tzinfo=UTC))
    billing.send_batch([ClosePeriod(subscription_id=s, customer_id=c, period_end=FEB_1) for s, c in subs], FEB_1)
    for sub, _ in subs:
        period = billing.invoices(sub)[-1]
        # 7.00 of inference less 6.00 included (3 seats x 2.00), Team fee 3 x 20.00.
        assert billing.lines(period.invoice_id) == [("usage", 700), ("credit", -600), ("fee", 6000)]


def test_cancelling_a_cancelled_subscription_is_rejected_as_an_invalid_transition(billing: Billing) -> None:
    sub, cus = subscribe(billing)
    billing.send(CancelSubscription(subscription_id=sub, customer_id=cus), JAN_16)
    again = billing.send(CancelSubscription(subscription_id=sub, customer_id=cus), JAN_16)
    outcome = billing.outcome(again)
    assert (outcome.status, outcome.error_code) == ("rejected", "invalid_transition")
    assert "cancelled" in outcome.error_detail


def test_a_rejected_command_writes_nothing_but_its_outcome(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, cus = subscribe(billing)
    with engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one()
    refused = billing.send(ResumeSubscription(subscription_id=sub, customer_id=cus), JAN_16)
    with engine.connect() as conn:
        after = conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one()
    assert billing.outcome(refused).status == "rejected"
    assert after == before


def test_pause_then_resume_moves_through_paused_and_back_with_history(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, cus = subscribe(billing)
    billing.send(PauseSubscription(subscription_id=sub, customer_id=cus), JAN_16)
    assert billing.subscription(sub).status == "paused"
    billing.send(ResumeSubscription(subscription_id=sub, customer_id=cus), JAN_16)
    assert billing.subscription(sub).status == "active"
    with engine.connect() as conn:
        kinds = conn.execute(sa.select(subscription_history.c.event_type).where(
            subscription_history.c.subscription_id == sub).order_by(subscription_history.c.id)).scalars().all()
    assert kinds == ["SubscriptionStarted", "SubscriptionPaused", "SubscriptionResumed"]


def test_a_repeated_create_alone_in_its_run_is_rejected_as_already_exists(billing: Billing) -> None:
    sub, cus = subscribe(billing)
    env = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                          payment_method_id="pm_card_visa"), JAN_16)
    assert (billing.outcome(env).status, billing.outcome(env).error_code) == ("rejected", "already_exists")
    assert len(billing.invoices(sub)) == 1


def test_an_unknown_plan_is_rejected_with_its_code(billing: Billing) -> None:
    sub, cus = new_ids()
    env = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="platinum", currency="USD"),
                       JAN_1)
    assert (billing.outcome(env).status, billing.outcome(env).error_code) == ("rejected", "unknown_plan")


def test_a_failed_payment_makes_the_subscription_past_due_and_a_later_success_reactivates_it(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, _ = subscribe(billing)
    [invoice] = billing.invoices(sub)
    common = {"subscription_id": sub, "invoice_id": invoice.invoice_id, "amount_minor": 900, "currency": "USD"}
    billing.send(PaymentFailed(**common, decline_code="insufficient_funds", failed_at=JAN_1), JAN_1)
    assert billing.subscription(sub).status == "past_due"
    billing.send(PaymentSucceeded(**common, provider_ref="pi_x", paid_at=JAN_16), JAN_16)
    assert (billing.subscription(sub).status, billing.invoices(sub)[0].status) == ("active", "paid")
    with engine.connect() as conn:
        types = conn.execute(sa.select(outbox.c.event_type).where(outbox.c.message_key == sub)
                             .order_by(outbox.c.id)).scalars().all()
    assert types == ["credits.granted", "credits.granted", "subscription.status_changed", "invoice.finalized",
                     "invoice.payment_failed", "subscription.status_changed", "invoice.paid",
                     "subscription.status_changed"]


def test_a_second_successful_charge_of_a_paid_invoice_is_kept_in_the_audit_log_for_a_refund(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, _ = subscribe(billing)
    [invoice] = billing.invoices(sub)
    common = {"subscription_id": sub, "invoice_id": invoice.invoice_id, "amount_minor": 900, "currency": "USD"}
    billing.send(PaymentSucceeded(**common, provider_ref="pi_first", paid_at=JAN_1), JAN_1)
    billing.send(PaymentSucceeded(**common, provider_ref="pi_second", paid_at=JAN_16), JAN_16)
    with engine.connect() as conn:
        details = conn.execute(sa.select(billing_audit_log.c.detail).where(
            billing_audit_log.c.action == "payment.duplicate",
            billing_audit_log.c.entity_id == invoice.invoice_id)).scalars().all()
    assert details == [{"provider_ref": "pi_second", "paid_ref": "pi_first"}]


def test_a_coupon_discounts_each_invoice_once(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, cus = subscribe(billing, plan="basic_monthly", trial_days=0, coupon_id="FIVE_OFF")
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    with engine.connect() as conn:
        redemptions = conn.execute(sa.select(coupon_redemptions.c.amount_minor).where(
            coupon_redemptions.c.subscription_id == sub)).scalars().all()
    assert redemptions == [500, 500]


def test_included_credits_of_a_closed_period_are_written_off_with_it(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sub, cus = subscribe(billing)
    billing.record_usage(sub, cus, "inference", {"cost_usd_micros": 500_000}, datetime(2026, 1, 3, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    with engine.connect() as conn:
        entries = conn.execute(sa.select(credit_entries.c.kind, credit_entries.c.amount_minor,
                                         credit_entries.c.units)
                               .where(credit_entries.c.subscription_id == sub).order_by(credit_entries.c.seq)).all()
    assert [(k, m) for k, m, _ in entries if m is not None] == [
        ("grant", 200), ("consume", -50), ("grant", 200), ("expire", -150)]
