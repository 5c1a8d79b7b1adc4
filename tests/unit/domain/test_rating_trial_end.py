"""rating.end_trial: a trial's window is closed like a period (its usage rated against the trial's own credits)
and billed on the invoice issued at the trial end. Plan `pro`: 9.00 a month, inference 1 micro-USD a unit with
2.00 included, storage 0.018 per GB-month with 1,000 included; a 14-day trial from Jan 1 ends Jan 15."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.calendar import Period
from shared.domain.catalog import MeterId, Plan, TrialEndBehaviour
from shared.domain.errors import RatingError
from shared.domain.ids import CustomerId, SubscriptionId
from shared.domain.invoice import InvoiceReason, LineKind
from shared.domain.ledger import CreditLedger, GrantSource, MeterCredit
from shared.domain.rating import end_trial, trial_credit_grants, trial_window_at
from shared.domain.subscription import Subscription, SubscriptionStatus

pytestmark = pytest.mark.unit

CATALOG = load_default_catalog()
PRO = CATALOG.plan("pro")
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_10 = datetime(2026, 1, 10, tzinfo=UTC)
JAN_15 = datetime(2026, 1, 15, tzinfo=UTC)
INFERENCE = MeterId("inference")


def trialing(plan: Plan = PRO, coupon_id: str | None = None) -> tuple[Subscription, CreditLedger]:
    sub = Subscription.start(subscription_id=SubscriptionId("sub_1"), customer_id=CustomerId("org_1"), plan=plan,
                             at=JAN_1, trial_days=14, coupon=CATALOG.coupon(coupon_id) if coupon_id else None)
    ledger = CreditLedger.open("org_1", [MeterCredit("inference", "USD"), MeterCredit("storage")])
    for grant in trial_credit_grants(subscription=sub, plan=plan):
        ledger.grant(grant_id=grant.key, meter=grant.meter_id, amount=grant.amount, source=GrantSource(grant.source),
                     effective_at=grant.effective_at, expires_at=grant.expires_at)
    return sub, ledger


def lines(invoice: object) -> list[tuple[str, int]]:
    return [(line.kind.value, line.amount.amount_minor) for line in invoice.lines]  # type: ignore[attr-defined]


def test_the_start_invoice_carries_the_trial_usage_after_the_fee_and_the_coupon_applies_to_both() -> None:
    sub, ledger = trialing(coupon_id="PARTNER10")

    ended = end_trial(subscription=sub, plan=PRO, usage_totals_by_meter={INFERENCE: Decimal(2_600_000)},
                      credits=ledger, coupon=CATALOG.coupon("PARTNER10"), tax_rate_bps=1000, at=JAN_15,
                      has_payment_method=True)

    assert ended.trial == Period(JAN_1, JAN_15) and ended.result is not None
    invoice = ended.result.invoice
    assert invoice.key.reason is InvoiceReason.SUBSCRIPTION_START
    # 9.00 + 2.60 - 2.00 = 9.60; 10% off fees and usage: -0.96; tax 10% of 8.64 = 0.86
    assert lines(invoice) == [("fee", 900), ("usage", 260), ("credit", -200), ("discount", -96), ("tax", 86)]
    assert invoice.total.amount_minor == 950
    assert [(c.meter_id, c.amount.amount_minor) for c in ended.result.credits_consumed] == [  # type: ignore[union-attr]
        ("inference", 200)]
    assert sub.status is SubscriptionStatus.ACTIVE


def test_an_early_conversion_closes_the_trial_window_at_the_conversion() -> None:
    sub, ledger = trialing()

    ended = end_trial(subscription=sub, plan=PRO, usage_totals_by_meter={INFERENCE: Decimal(2_500_000)},
                      credits=ledger, coupon=None, tax_rate_bps=0, at=JAN_10, has_payment_method=True)

    assert ended.trial == Period(JAN_1, JAN_10) and ended.result is not None
    assert sub.current_period.start == JAN_10
    assert lines(ended.result.invoice) == [("fee", 900), ("usage", 250), ("credit", -200)]
    usage_periods = {line.period for line in ended.result.invoice.lines if line.kind is LineKind.USAGE}
    assert usage_periods == {Period(JAN_1, JAN_10)}


def test_a_trial_cancelled_at_its_end_bills_its_overage_on_a_final_invoice_with_tax() -> None:
    plan = replace(PRO, trial_end_without_payment_method=TrialEndBehaviour.CANCEL)
    sub, ledger = trialing(plan)

    ended = end_trial(subscription=sub, plan=plan, usage_totals_by_meter={INFERENCE: Decimal(2_600_000)},
                      credits=ledger, coupon=None, tax_rate_bps=1000, at=JAN_15, has_payment_method=False)

    assert sub.status is SubscriptionStatus.CANCELLED and ended.result is not None
    final = ended.result.invoice
    assert (final.key.reason, final.key.period) == (InvoiceReason.PERIOD_CLOSE, Period(JAN_1, JAN_15))
    assert lines(final) == [("usage", 260), ("credit", -200), ("tax", 6)]
    assert ended.result.grants == ()


def test_a_trial_cancelled_at_its_end_with_nothing_owed_issues_nothing() -> None:
    plan = replace(PRO, trial_end_without_payment_method=TrialEndBehaviour.CANCEL)
    sub, ledger = trialing(plan)

    ended = end_trial(subscription=sub, plan=plan, usage_totals_by_meter={INFERENCE: Decimal(1_000_000)},
                      credits=ledger, coupon=None, tax_rate_bps=0, at=JAN_15, has_payment_method=False)

    assert ended.result is None and ended.trial == Period(JAN_1, JAN_15)
    assert ledger.balance("inference", JAN_15.replace(day=14)).amount_minor == 100  # type: ignore[union-attr]


def test_a_trial_window_has_no_length_when_converted_at_its_start() -> None:
    sub, _ledger = trialing()
    assert trial_window_at(sub, JAN_1) is None
    assert trial_window_at(sub, datetime(2026, 2, 1, tzinfo=UTC)) == Period(JAN_1, JAN_15)


def test_only_a_trialing_subscription_has_a_trial_to_end() -> None:
    sub, ledger = trialing()
    end_trial(subscription=sub, plan=PRO, usage_totals_by_meter={}, credits=ledger, coupon=None, tax_rate_bps=0,
              at=JAN_15, has_payment_method=True)
    with pytest.raises(RatingError):
        end_trial(subscription=sub, plan=PRO, usage_totals_by_meter={}, credits=ledger, coupon=None,
                  tax_rate_bps=0, at=JAN_15, has_payment_method=True)
