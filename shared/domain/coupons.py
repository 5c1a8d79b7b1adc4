"""Coupons: what a discount is worth, when it may be redeemed, and how often it has been applied.

Contract:
- A coupon is attached to a subscription once (``check_redeemable`` at subscribe time); ``max_redemptions``
  limits how many subscriptions may redeem it (the caller supplies the count it keeps).
- Each invoice the coupon discounts yields a ``CouponRedemption`` keyed by (coupon, invoice key). Building
  the same invoice twice yields the same key, so ``AppliedCoupon.record`` counts it once and the caller can
  enforce the same with a unique constraint on ``CouponRedemption.key``.
- A discount never exceeds the amount it applies to, so a coupon never makes an invoice negative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from typing import NewType

from shared.domain.calendar import ensure_utc
from shared.domain.errors import CouponError, CouponNotRedeemableError, InvalidValueError
from shared.domain.money import Money

CouponId = NewType("CouponId", str)

#: Separates a plan id from its version in the id of a later version ("pro@v2"); see the catalog store.
PLAN_VERSION_SEPARATOR = "@v"


def plan_family(plan_id: str) -> str:
    """The plan a catalog plan id is a version or a price list of: "pro@v2~EUR" -> "pro", "pro" -> "pro".

    A coupon restricted to a plan applies to every version of it (a price change must not silently end a
    customer's discount).
    """
    plan_id = plan_id.split("~", 1)[0]  # "pro~EUR": the plan priced in another currency (catalog.plan_in)
    base, separator, version = plan_id.rpartition(PLAN_VERSION_SEPARATOR)
    return base if separator and version.isdigit() else plan_id


class DiscountType(StrEnum):
    PERCENT = "percent"
    FIXED_AMOUNT = "fixed_amount"


class CouponDuration(StrEnum):
    ONCE = "once"
    REPEATING = "repeating"
    FOREVER = "forever"


class CouponScope(StrEnum):
    """Which invoice lines the discount may reduce."""

    FEE = "fee"
    FEE_AND_USAGE = "fee_and_usage"


@dataclass(frozen=True, slots=True)
class Coupon:
    """A discount definition from the catalog.

    ``percent_off`` is a Decimal percentage in (0, 100]; ``amount_off`` a fixed amount per invoice.
    ``duration_periods`` is required for (and only for) REPEATING: the number of invoices discounted.
    ``plan_ids`` empty means the coupon applies to every plan.
    """

    id: CouponId
    name: str
    discount_type: DiscountType
    duration: CouponDuration
    percent_off: Decimal | None = None
    amount_off: Money | None = None
    duration_periods: int | None = None
    max_redemptions: int | None = None
    redeem_by: datetime | None = None
    applies_to: CouponScope = CouponScope.FEE
    plan_ids: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.discount_type is DiscountType.PERCENT:
            if self.percent_off is None or self.amount_off is not None:
                raise InvalidValueError(f"coupon {self.id}: a percent coupon needs percent_off only")
            if isinstance(self.percent_off, float) or not isinstance(self.percent_off, Decimal):
                raise TypeError(f"coupon {self.id}: percent_off must be a Decimal")
            if not Decimal(0) < self.percent_off <= Decimal(100):
                raise InvalidValueError(f"coupon {self.id}: percent_off must be in (0, 100]")
        else:
            if self.amount_off is None or self.percent_off is not None:
                raise InvalidValueError(f"coupon {self.id}: a fixed coupon needs amount_off only")
            if not self.amount_off.is_positive():
                raise InvalidValueError(f"coupon {self.id}: amount_off must be positive")
        if self.duration is CouponDuration.REPEATING:
            if self.duration_periods is None or self.duration_periods < 1:
                raise InvalidValueError(f"coupon {self.id}: repeating needs duration_periods >= 1")
        elif self.duration_periods is not None:
            raise InvalidValueError(f"coupon {self.id}: duration_periods is only for repeating coupons")
        if self.max_redemptions is not None and self.max_redemptions < 1:
            raise InvalidValueError(f"coupon {self.id}: max_redemptions must be >= 1")
        if self.redeem_by is not None:
            object.__setattr__(self, "redeem_by", ensure_utc(self.redeem_by, "redeem_by"))

    @property
    def invoice_limit(self) -> int | None:
        """How many invoices the coupon discounts per subscription (None: no limit)."""
        if self.duration is CouponDuration.ONCE:
            return 1
        if self.duration is CouponDuration.REPEATING:
            return self.duration_periods
        return None

    def check_redeemable(self, *, plan_id: str, times_redeemed: int, at: datetime) -> None:
        """Raise ``CouponNotRedeemableError`` unless a subscription to ``plan_id`` may redeem it at ``at``."""
        instant = ensure_utc(at)
        if self.redeem_by is not None and instant >= self.redeem_by:
            raise CouponNotRedeemableError(f"coupon {self.id} expired at {self.redeem_by.isoformat()}",
                                           code="coupon_expired")
        if self.max_redemptions is not None and times_redeemed >= self.max_redemptions:
            raise CouponNotRedeemableError(
                f"coupon {self.id} reached its maximum of {self.max_redemptions} redemptions", code="coupon_exhausted"
            )
        if self.plan_ids and plan_family(plan_id) not in {plan_family(p) for p in self.plan_ids}:
            raise CouponNotRedeemableError(f"coupon {self.id} does not apply to plan {plan_id}",
                                           code="coupon_not_for_plan")

    def discount_for(self, eligible: Money) -> Money:
        """The discount (a non-negative amount) on ``eligible``; never more than ``eligible``.

        Percent discounts round once (half away from zero); a non-positive base gets no discount.
        """
        if not eligible.is_positive():
            return Money.zero(eligible.currency)
        if self.percent_off is not None:
            return eligible.scale(_percent(self.percent_off)).min(eligible)
        if self.amount_off is not None:
            return self.amount_off.min(eligible)
        raise CouponError(f"coupon {self.id} has neither percent_off nor amount_off")


@lru_cache(maxsize=1024)
def _percent(percent_off: Decimal) -> Fraction:
    """``percent_off`` / 100 as an exact fraction (memoised: a billing run applies a few coupons many times)."""
    return Fraction(percent_off) / 100


@dataclass(frozen=True, slots=True)
class CouponRedemption:
    """One coupon applied to one invoice. ``key`` is unique per (coupon, invoice)."""

    coupon_id: CouponId
    invoice_key: str
    amount: Money

    @property
    def key(self) -> str:
        return f"{self.coupon_id}|{self.invoice_key}"


@dataclass(frozen=True, slots=True)
class AppliedCoupon:
    """A coupon attached to a subscription and the invoices it has discounted so far."""

    coupon_id: CouponId
    redeemed_at: datetime
    invoice_keys: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "redeemed_at", ensure_utc(self.redeemed_at, "redeemed_at"))

    @property
    def invoices_discounted(self) -> int:
        return len(self.invoice_keys)

    def applies_to_invoice(self, coupon: Coupon, invoice_key: str) -> bool:
        """True if ``invoice_key`` was already discounted (a rebuild) or the duration is not used up."""
        self._same(coupon)
        if invoice_key in self.invoice_keys:
            return True
        limit = coupon.invoice_limit
        return limit is None or self.invoices_discounted < limit

    def record(self, redemption: CouponRedemption) -> AppliedCoupon:
        """Count ``redemption``; recording the same invoice twice is a no-op."""
        if redemption.coupon_id != self.coupon_id:
            raise CouponError(f"redemption of {redemption.coupon_id} recorded on coupon {self.coupon_id}")
        if redemption.invoice_key in self.invoice_keys:
            return self
        return AppliedCoupon(self.coupon_id, self.redeemed_at, self.invoice_keys | {redemption.invoice_key})

    def give_back(self, invoice_key: str) -> AppliedCoupon:
        """Forget the redemption on ``invoice_key`` (that invoice was credited in full): a coupon limited to N
        invoices then discounts one more. Not redeemed on that invoice: unchanged."""
        if invoice_key not in self.invoice_keys:
            return self
        return AppliedCoupon(self.coupon_id, self.redeemed_at, self.invoice_keys - {invoice_key})

    def _same(self, coupon: Coupon) -> None:
        if coupon.id != self.coupon_id:
            raise CouponError(f"coupon {coupon.id} given for applied coupon {self.coupon_id}")


def apply_coupon(
    coupon: Coupon,
    applied: AppliedCoupon,
    *,
    invoice_key: str,
    fee_amount: Money,
    usage_amount: Money,
    invoice_subtotal: Money,
) -> CouponRedemption | None:
    """The redemption for one invoice, or None when the coupon no longer applies or gives nothing.

    ``fee_amount``/``usage_amount`` are the invoice's eligible fee and usage subtotals;
    ``invoice_subtotal`` is the whole pre-tax subtotal, used to cap the discount so the invoice
    never goes below zero.
    """
    if not applied.applies_to_invoice(coupon, invoice_key):
        return None
    eligible = fee_amount
    if coupon.applies_to is CouponScope.FEE_AND_USAGE:
        eligible = eligible + usage_amount
    discount = coupon.discount_for(eligible)
    cap = invoice_subtotal.max(Money.zero(invoice_subtotal.currency))
    discount = discount.min(cap)
    if discount.is_zero():
        return None
    return CouponRedemption(coupon_id=coupon.id, invoice_key=invoice_key, amount=discount)
