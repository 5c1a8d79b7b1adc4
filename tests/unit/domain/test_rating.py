from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.calendar import BillingAnchor, Period
from shared.domain.catalog import MeterId, Plan
from shared.domain.errors import RatingError
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import InvoiceLine, LineKind
from shared.domain.ledger import CreditLedger, GrantSource, MeterCredit
from shared.domain.money import Money
from shared.domain.rating import (
    CreditSource,
    LateUsage,
    close_period,
    included_grants,
    start_invoice,
)
from shared.domain.subscription import Subscription, SubscriptionStatus

pytestmark = pytest.mark.unit

CATALOG = load_default_catalog()
JAN_1 = datetime(2024, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2024, 2, 1, tzinfo=UTC)
JANUARY = Period(JAN_1, FEB_1)
INFERENCE, STORAGE = MeterId("inference"), MeterId("storage")


def usd(major: str) -> Money:
    return Money.of(major, "USD")


def subscribe(plan_id: str, seats: int = 1, coupon_id: str | None = None) -> Subscription:
    return Subscription.start(
        subscription_id=SubscriptionId("sub_1"),
        customer_id=CustomerId("org_1"),
        plan=CATALOG.plan(plan_id),
        at=JAN_1,
        seats=seats,
        trial_days=0,
        coupon=CATALOG.coupon(coupon_id) if coupon_id else None,
    )


def ledger_with_included_credits(plan: Plan, seats: int, period: Period = JANUARY) -> CreditLedger:
    """The org's real credit ledger, holding the plan's included credits for ``period``."""
    ledger = CreditLedger.open("org_1", [MeterCredit("inference", "USD"), MeterCredit("storage")])
    for grant in included_grants("sub_1", plan, seats, period):
        ledger.grant(
            grant_id=grant.key,
            meter=grant.meter_id,
            amount=grant.amount,
            source=GrantSource(grant.source),
            effective_at=grant.effective_at,
            expires_at=grant.expires_at,
        )
    return ledger


def close(subscription: Subscription, usage: dict[MeterId, Decimal], credits: CreditSource, **kwargs: object):
    plan = CATALOG.plan(subscription.plan_id)
    defaults: dict[str, object] = {"coupon": None, "tax_rate_bps": 0, "at": FEB_1, "invoice_id": InvoiceId("inv_1")}
    defaults.update(kwargs)
    return close_period(subscription=subscription, plan=plan, usage_totals_by_meter=usage, credits=credits, **defaults)  # type: ignore[arg-type]


def amounts(result) -> list[tuple[LineKind, Money]]:
    return [(line.kind, line.amount) for line in result.invoice.lines]


def test_pro_period_close_bills_usage_after_included_credits_and_next_fee_in_advance():
    subscription = subscribe("pro")
    ledger = ledger_with_included_credits(CATALOG.plan("pro"), 1)
    result = close(subscription, {INFERENCE: Decimal(3_500_000), STORAGE: Decimal("1500.5")}, ledger)
    assert amounts(result) == [
        (LineKind.USAGE, usd("3.50")),  # 3.5 M micro-dollars of inference
        (LineKind.CREDIT, usd("-2.00")),  # the included USD 2 consumed first
        (LineKind.USAGE, usd("9.01")),  # 500.5 GB-months beyond 1 TB at USD 0.018
        (LineKind.FEE, usd("9.00")),  # February's fee, in advance
    ]
    assert result.invoice.total == usd("19.51")
    assert ledger.balance("inference", datetime(2024, 1, 31, tzinfo=UTC)) == usd("0")
    assert [line.period for line in result.invoice.lines_of(LineKind.FEE)] == [
        Period(FEB_1, datetime(2024, 3, 1, tzinfo=UTC))
    ]
    assert [(grant.meter_id, grant.amount) for grant in result.grants] == [
        (INFERENCE, usd("2.00")),
        (STORAGE, Decimal(1000)),
    ]
    assert subscription.current_period == result.next_period == Period(FEB_1, datetime(2024, 3, 1, tzinfo=UTC))


def test_team_credits_are_pooled_per_seat_across_the_org():
    subscription = subscribe("team", seats=3)
    ledger = ledger_with_included_credits(CATALOG.plan("team"), 3)
    result = close(subscription, {INFERENCE: Decimal(5_000_000)}, ledger)
    assert amounts(result) == [
        (LineKind.USAGE, usd("5.00")),
        (LineKind.CREDIT, usd("-5.00")),
        (LineKind.FEE, usd("60.00")),
    ]


def test_free_tier_blocked_meters_are_never_billed():
    subscription = subscribe("free")
    ledger = ledger_with_included_credits(CATALOG.plan("free"), 1)
    result = close(subscription, {INFERENCE: Decimal(100_000), STORAGE: Decimal(50)}, ledger)
    assert amounts(result) == [(LineKind.FEE, usd("0.00"))]
    assert result.invoice.total.is_zero()


def test_usage_of_a_meter_the_plan_does_not_price_is_reported_not_billed():
    subscription = subscribe("basic_monthly")
    result = close(
        subscription, {INFERENCE: Decimal(10)}, ledger_with_included_credits(CATALOG.plan("basic_monthly"), 1)
    )
    assert [item.meter_id for item in result.unbilled] == [INFERENCE]
    assert amounts(result) == [(LineKind.FEE, usd("10.00"))]


def test_pending_downgrade_bills_the_next_period_on_the_new_plan():
    subscription = subscribe("premium_monthly")
    subscription.change_plan(
        new_plan=CATALOG.plan("basic_monthly"), current_plan=CATALOG.plan("premium_monthly"), at=JAN_1
    )
    ledger = ledger_with_included_credits(CATALOG.plan("premium_monthly"), 1)
    with pytest.raises(RatingError, match="next_plan"):
        close(subscription, {}, ledger)
    result = close(subscription, {}, ledger, next_plan=CATALOG.plan("basic_monthly"))
    assert amounts(result) == [(LineKind.FEE, usd("10.00"))]
    assert subscription.plan_id == "basic_monthly"


def test_cancel_at_period_end_bills_no_further_fee_and_grants_nothing():
    subscription = subscribe("pro")
    subscription.cancel(at=JAN_1, at_period_end=True)
    ledger = ledger_with_included_credits(CATALOG.plan("pro"), 1)
    result = close(subscription, {INFERENCE: Decimal(3_000_000)}, ledger)
    assert amounts(result) == [(LineKind.USAGE, usd("3.00")), (LineKind.CREDIT, usd("-2.00"))]
    assert (result.grants, result.next_period) == ((), None)
    assert subscription.status is SubscriptionStatus.CANCELLED


def test_accrued_proration_late_usage_coupon_and_tax_all_land_on_the_close_invoice():
    subscription = subscribe("pro", coupon_id="PARTNER10")
    ledger = ledger_with_included_credits(CATALOG.plan("pro"), 1)
    december = Period(datetime(2023, 12, 1, tzinfo=UTC), JAN_1)
    proration = InvoiceLine(kind=LineKind.PRORATION, description="seat credit", amount=usd("-1.00"), proration=True)
    result = close(
        subscription,
        {INFERENCE: Decimal(2_000_000)},
        ledger,
        coupon=CATALOG.coupon("PARTNER10"),
        tax_rate_bps=2000,
        pending_proration_lines=[proration],
        late_usage=[LateUsage(INFERENCE, december, Decimal(1_000_000))],
    )
    assert amounts(result) == [
        (LineKind.USAGE, usd("2.00")),
        (LineKind.CREDIT, usd("-2.00")),
        (LineKind.ADJUSTMENT, usd("1.00")),  # December's credits are gone: billed in full
        (LineKind.PRORATION, usd("-1.00")),
        (LineKind.FEE, usd("9.00")),
        (LineKind.DISCOUNT, usd("-1.00")),  # 10 % of fee 9.00 + usage 1.00
        (LineKind.TAX, usd("1.60")),  # 20 % of 8.00
    ]
    assert result.invoice.total == usd("9.60")
    assert result.coupon_redemption is not None and subscription.coupon.invoices_discounted == 1


def test_a_replayed_close_draws_no_more_credit_and_rebuilds_the_same_invoice():
    ledger = ledger_with_included_credits(CATALOG.plan("pro"), 1)
    first = close(subscribe("pro"), {INFERENCE: Decimal(1_500_000)}, ledger)
    entries_after_first = len(ledger.entries)
    replay = close(subscribe("pro"), {INFERENCE: Decimal(1_500_000)}, ledger)
    assert len(ledger.entries) == entries_after_first
    assert str(replay.invoice.key) == str(first.invoice.key)
    assert amounts(replay) == amounts(first)
    assert ledger.balance("inference", datetime(2024, 1, 31, tzinfo=UTC)) == usd("0.50")


def test_closing_before_the_period_ends_is_refused():
    with pytest.raises(RatingError):
        close(
            subscribe("pro"),
            {},
            ledger_with_included_credits(CATALOG.plan("pro"), 1),
            at=datetime(2024, 1, 20, tzinfo=UTC),
        )


def test_first_invoice_of_a_stub_period_is_prorated_to_the_anchor():
    subscription = Subscription.start(
        subscription_id=SubscriptionId("sub_1"),
        customer_id=CustomerId("cus_1"),
        plan=CATALOG.plan("basic_monthly"),
        at=datetime(2024, 1, 16, 12, tzinfo=UTC),
        anchor=BillingAnchor(day=1),
        trial_days=0,
    )
    result = start_invoice(
        subscription=subscription,
        plan=CATALOG.plan("basic_monthly"),
        coupon=None,
        tax_rate_bps=0,
        at=subscription.started_at,
        invoice_id=InvoiceId("inv_0"),
    )
    assert amounts(result) == [(LineKind.PRORATION, usd("5.00"))]


def test_first_invoice_of_a_full_period_charges_the_fee_with_the_once_coupon():
    subscription = subscribe("basic_monthly", coupon_id="WELCOME20")
    result = start_invoice(
        subscription=subscription,
        plan=CATALOG.plan("basic_monthly"),
        coupon=CATALOG.coupon("WELCOME20"),
        tax_rate_bps=0,
        at=JAN_1,
        invoice_id=InvoiceId("inv_0"),
    )
    assert amounts(result) == [(LineKind.FEE, usd("10.00")), (LineKind.DISCOUNT, usd("-2.00"))]
    second = close(
        subscription,
        {},
        ledger_with_included_credits(CATALOG.plan("basic_monthly"), 1),
        coupon=CATALOG.coupon("WELCOME20"),
    )
    assert amounts(second) == [(LineKind.FEE, usd("10.00"))]


def test_usage_lines_read_in_the_meters_own_name_and_unit():
    subscription = subscribe("pro")
    ledger = ledger_with_included_credits(CATALOG.plan("pro"), 1)
    result = close(subscription, {INFERENCE: Decimal(3_500_000), STORAGE: Decimal("1500.5")}, ledger)
    descriptions = [line.description for line in result.invoice.lines if line.kind is not LineKind.FEE]
    assert descriptions == [
        "Inference compute: 3,500,000 micro-USD",
        "Included credits applied to Inference compute",
        "Private storage: 1,500.50 GB-months, 1,000 covered by included credits",
    ]
