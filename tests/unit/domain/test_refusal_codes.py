"""Every refusal of the subscription aggregate, the catalog and coupons carries its own machine-readable code
(issue 14, item 8): the worker stores it in the rejected command's outcome and the edge answers
`/problems/rejected/<code>`. Before, every subscription refusal was `subscription` (its family's name)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.catalog import ChangeTiming, PlanId
from shared.domain.ids import CustomerId, SubscriptionId
from shared.domain.money import Money
from shared.domain.subscription import Subscription
from shared.errors import BillingError, refusal_code

CATALOG = load_default_catalog()
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
PRO_EUR = dataclasses.replace(CATALOG.plan("pro"), id=PlanId("pro_eur"), price=Money.of("9.00", "EUR"))


def subscribe(plan_id: str, seats: int = 1, trial_days: int = 0) -> Subscription:
    return Subscription.start(subscription_id=SubscriptionId("sub_1"), customer_id=CustomerId("cus_1"),
                              plan=CATALOG.plan(plan_id), at=JAN_1, seats=seats, trial_days=trial_days)


def code_of(action: Callable[[], object]) -> str:
    with pytest.raises(BillingError) as refused:
        action()
    return refusal_code(refused.value)


def test_each_subscription_refusal_has_its_own_code() -> None:
    pro, team, free = CATALOG.plan("pro"), CATALOG.plan("team"), CATALOG.plan("free")
    sub = subscribe("pro")
    assert code_of(lambda: sub.change_plan(new_plan=pro, current_plan=pro, at=JAN_16)) == "already_on_plan"
    assert code_of(lambda: sub.change_plan(new_plan=PRO_EUR, current_plan=pro, at=JAN_16)) == "currency_mismatch"
    assert code_of(lambda: sub.change_seats(seats=3, plan=pro, at=JAN_16)) == "not_sold_per_seat"
    assert code_of(lambda: subscribe("team", seats=3).change_seats(seats=3, plan=team, at=JAN_16)) == (
        "already_has_seats")
    assert code_of(lambda: Subscription.start(subscription_id=SubscriptionId("sub_2"),
                                              customer_id=CustomerId("cus_1"), plan=free, at=JAN_1, seats=2,
                                              trial_days=0)) == "not_sold_per_seat"
    assert code_of(lambda: sub.advance_period(at=JAN_16)) == "period_not_ended"
    sub.cancel(at=JAN_16)
    assert code_of(lambda: sub.change_plan(new_plan=team, current_plan=pro, at=JAN_16,
                                           timing=ChangeTiming.IMMEDIATE)) == "not_changeable"


def test_catalog_and_coupon_refusals_have_their_own_code() -> None:
    assert code_of(lambda: CATALOG.meter("nope")) == "unknown_meter"
    assert code_of(lambda: CATALOG.coupon("nope")) == "unknown_coupon"
    assert code_of(lambda: CATALOG.plan("nope")) == "unknown_plan"
    assert code_of(lambda: PRO_EUR.is_upgrade_from(CATALOG.plan("pro"), 1)) == "currency_mismatch"
    coupon = next(c for c in CATALOG.coupons.values() if c.plan_ids)
    other = next(p for p in CATALOG.plans if p not in coupon.plan_ids)
    assert code_of(lambda: coupon.check_redeemable(plan_id=other, times_redeemed=0, at=JAN_1)) == (
        "coupon_not_for_plan")
