from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.coupons import (
    AppliedCoupon,
    Coupon,
    CouponDuration,
    CouponId,
    CouponScope,
    DiscountType,
    apply_coupon,
    plan_family,
)
from shared.domain.errors import CouponNotRedeemableError, InvalidValueError
from shared.domain.money import Money

pytestmark = pytest.mark.unit

AT = datetime(2024, 1, 1, tzinfo=UTC)


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def percent(value: str, duration: CouponDuration = CouponDuration.FOREVER, **kwargs: object) -> Coupon:
    return Coupon(
        id=CouponId("PCT"),
        name="percent",
        discount_type=DiscountType.PERCENT,
        duration=duration,
        percent_off=Decimal(value),
        **kwargs,  # type: ignore[arg-type]
    )


def fixed(minor: int, duration: CouponDuration = CouponDuration.FOREVER) -> Coupon:
    return Coupon(
        id=CouponId("FIX"),
        name="fixed",
        discount_type=DiscountType.FIXED_AMOUNT,
        duration=duration,
        amount_off=usd(minor),
    )


def redeem(coupon: Coupon, applied: AppliedCoupon, key: str, fee: int, usage: int = 0, subtotal: int | None = None):
    return apply_coupon(
        coupon,
        applied,
        invoice_key=key,
        fee_amount=usd(fee),
        usage_amount=usd(usage),
        invoice_subtotal=usd(fee + usage if subtotal is None else subtotal),
    )


def test_percent_discount_rounds_once_half_away_from_zero():
    assert percent("15").discount_for(usd(1003)) == usd(150)  # 150.45 -> 150
    assert percent("12.5").discount_for(usd(1004)) == usd(126)  # 125.5 -> 126


def test_fixed_discount_never_exceeds_what_it_applies_to():
    assert fixed(500).discount_for(usd(300)) == usd(300)
    assert fixed(500).discount_for(usd(0)) == usd(0)


def test_discount_is_capped_so_the_invoice_never_goes_negative():
    applied = AppliedCoupon(coupon_id=CouponId("FIX"), redeemed_at=AT)
    # a proration credit already brought the subtotal down to 2.00
    redemption = redeem(fixed(500), applied, "inv-1", fee=1000, subtotal=200)
    assert redemption is not None and redemption.amount == usd(200)
    assert redeem(fixed(500), applied, "inv-2", fee=1000, subtotal=-100) is None


def test_once_coupon_discounts_one_invoice_even_if_it_is_built_twice():
    coupon = percent("20", CouponDuration.ONCE)
    applied = AppliedCoupon(coupon_id=coupon.id, redeemed_at=AT)
    first = redeem(coupon, applied, "inv-1", fee=1000)
    assert first is not None and first.amount == usd(200)
    applied = applied.record(first)
    rebuilt = redeem(coupon, applied, "inv-1", fee=1000)
    assert rebuilt == first and rebuilt.key == first.key == "PCT|inv-1"
    assert applied.record(rebuilt) is applied and applied.invoices_discounted == 1
    assert redeem(coupon, applied, "inv-2", fee=1000) is None


def test_repeating_coupon_discounts_exactly_n_invoices():
    coupon = percent("25", CouponDuration.REPEATING, duration_periods=3)
    applied = AppliedCoupon(coupon_id=coupon.id, redeemed_at=AT)
    discounted = []
    for number in range(5):
        redemption = redeem(coupon, applied, f"inv-{number}", fee=2000)
        if redemption is not None:
            applied = applied.record(redemption)
            discounted.append(number)
    assert discounted == [0, 1, 2]


def test_usage_is_discounted_only_when_configured():
    fee_only = percent("10")
    with_usage = percent("10", applies_to=CouponScope.FEE_AND_USAGE)
    applied = AppliedCoupon(coupon_id=CouponId("PCT"), redeemed_at=AT)
    assert redeem(fee_only, applied, "inv", fee=1000, usage=5000).amount == usd(100)
    assert redeem(with_usage, applied, "inv", fee=1000, usage=5000).amount == usd(600)


def test_redemption_rules_expiry_max_redemptions_and_plans():
    coupon = percent("10", max_redemptions=2, redeem_by=datetime(2024, 6, 1, tzinfo=UTC), plan_ids=frozenset({"pro"}))
    coupon.check_redeemable(plan_id="pro", times_redeemed=1, at=AT)
    with pytest.raises(CouponNotRedeemableError, match="expired"):
        coupon.check_redeemable(plan_id="pro", times_redeemed=0, at=datetime(2024, 6, 1, tzinfo=UTC))
    with pytest.raises(CouponNotRedeemableError, match="maximum of 2"):
        coupon.check_redeemable(plan_id="pro", times_redeemed=2, at=AT)
    with pytest.raises(CouponNotRedeemableError, match="does not apply to plan team"):
        coupon.check_redeemable(plan_id="team", times_redeemed=0, at=AT)


def test_a_plan_restriction_matches_every_version_of_the_plan():
    coupon = percent("10", plan_ids=frozenset({"pro"}))
    coupon.check_redeemable(plan_id="pro@v2", times_redeemed=0, at=AT)
    coupon.check_redeemable(plan_id="pro@v12", times_redeemed=0, at=AT)
    with pytest.raises(CouponNotRedeemableError, match="does not apply to plan pro-plus@v2"):
        coupon.check_redeemable(plan_id="pro-plus@v2", times_redeemed=0, at=AT)
    with pytest.raises(CouponNotRedeemableError, match="does not apply to plan pro@vx"):
        coupon.check_redeemable(plan_id="pro@vx", times_redeemed=0, at=AT)
    assert plan_family("pro@v2") == plan_family("pro") == "pro"


def test_malformed_coupons_are_refused():
    with pytest.raises(InvalidValueError):
        percent("0")
    with pytest.raises(InvalidValueError):
        percent("10", CouponDuration.REPEATING)
    with pytest.raises(InvalidValueError):
        fixed(0)


@given(
    fee=st.integers(min_value=0, max_value=10**9),
    usage=st.integers(min_value=0, max_value=10**9),
    credit=st.integers(min_value=0, max_value=2 * 10**9),
    pct=st.decimals(min_value=Decimal("0.01"), max_value=100, places=2),
    amount_off=st.integers(min_value=1, max_value=10**9),
    use_percent=st.booleans(),
)
def test_a_coupon_never_makes_an_invoice_negative(fee, usage, credit, pct, amount_off, use_percent):
    coupon = percent(str(pct), applies_to=CouponScope.FEE_AND_USAGE) if use_percent else fixed(amount_off)
    applied = AppliedCoupon(coupon_id=coupon.id, redeemed_at=AT)
    subtotal = fee + usage - credit
    redemption = redeem(coupon, applied, "inv", fee=fee, usage=usage, subtotal=subtotal)
    discount = 0 if redemption is None else redemption.amount.amount_minor
    assert discount >= 0
    assert subtotal - discount >= min(subtotal, 0)
