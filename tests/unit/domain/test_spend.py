"""The usage-tier spend rule: included credits first, then block (free tier) or bill up to a cap."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.catalog import IncludedCredit, MeterId, MeterPricing, OveragePolicy, Pooling
from shared.domain.money import Money, UnitPrice, line_amount
from shared.domain.spend import (
    SpendDenialReason,
    SpendLimits,
    SpendUsage,
    decide_spend,
    quantity_of,
    summarise_spend,
)

pytestmark = pytest.mark.unit

MICRO = UnitPrice(Decimal("0.000001"), "USD")  # the compute meter: quantity = USD micros


def usd(text: str) -> Money:
    return Money.of(text, "USD")


def free_tier(included: str = "0.10") -> SpendLimits:
    return SpendLimits("inference", MICRO, usd(included), OveragePolicy.BLOCK)


def pro_tier(included: str = "2.00", cap: str | None = None) -> SpendLimits:
    return SpendLimits("inference", MICRO, usd(included), OveragePolicy.BILL, usd(cap) if cap else None)


def test_the_free_tier_admits_exactly_its_included_credits_then_refuses() -> None:
    limits = free_tier("0.10")  # 100,000 micros
    assert decide_spend(limits, 99_999, 1).allowed
    refused = decide_spend(limits, 100_000, 1)
    assert not refused.allowed
    assert refused.reason is SpendDenialReason.INCLUDED_CREDITS_EXHAUSTED
    assert refused.used_quantity == 100_000  # a refusal consumes nothing


def test_a_request_that_would_cross_the_limit_is_refused_whole_even_with_credit_left() -> None:
    decision = decide_spend(free_tier("0.10"), 99_000, 2_000)
    assert not decision.allowed
    assert decision.remaining_quantity == 1_000


def test_a_paid_tier_without_a_cap_is_never_refused() -> None:
    decision = decide_spend(pro_tier(), 10**12, 10**9)
    assert decision.allowed and decision.limit_quantity is None and decision.remaining_quantity is None


def test_a_paid_tier_with_a_cap_admits_credits_plus_cap() -> None:
    limits = pro_tier("2.00", cap="5.00")  # 7,000,000 micros in all
    assert limits.quantity_limit() == 7_000_000
    assert decide_spend(limits, 6_999_000, 1_000).allowed
    refused = decide_spend(limits, 7_000_000, 1)
    assert refused.reason is SpendDenialReason.SPEND_CAP_REACHED


def test_a_limit_is_the_largest_quantity_whose_exact_price_fits_when_the_price_does_not_divide_it() -> None:
    limits = SpendLimits("tokens", UnitPrice(Decimal("0.0003"), "USD"), usd("0.10"), OveragePolicy.BLOCK)
    assert limits.quantity_limit() == 333  # 333 x 0.0003 = 0.0999; 334 would cost 0.1002


def test_summary_splits_the_cost_into_credits_and_pay_as_you_go_spend() -> None:
    summary = summarise_spend(pro_tier("2.00", cap="5.00"), 3_500_000)  # USD 3.50 of usage
    assert summary.usage_cost == usd("3.50")
    assert summary.included_remaining == usd("0.00")
    assert summary.spend == usd("1.50")
    assert summary.cap_remaining == usd("3.50")
    assert summary.remaining_quantity == 3_500_000
    assert not summary.blocked and summary.reason is None


def test_a_blocked_free_tier_has_no_spend_and_says_why() -> None:
    summary = summarise_spend(free_tier("0.10"), 100_000)
    assert summary.spend == usd("0.00")
    assert summary.cap_remaining is None
    assert summary.blocked and summary.reason is SpendDenialReason.INCLUDED_CREDITS_EXHAUSTED


def test_limits_refuse_mixed_currencies_and_free_prices() -> None:
    with pytest.raises(ValueError):
        SpendLimits("inference", MICRO, Money.of("1", "EUR"), OveragePolicy.BLOCK)
    with pytest.raises(ValueError):
        SpendLimits("inference", MICRO, usd("1"), OveragePolicy.BILL, Money.of("5", "EUR"))
    with pytest.raises(ValueError):
        SpendLimits("inference", UnitPrice(Decimal("0"), "USD"), usd("1"), OveragePolicy.BLOCK)
    with pytest.raises(ValueError):
        decide_spend(free_tier(), 0, 0)


def test_meter_values_become_whole_quantities_rounded_up() -> None:
    assert quantity_of(12) == 12
    assert quantity_of("12.01") == 13  # a fraction of a micro-dollar is never free
    assert quantity_of(True) is None
    assert quantity_of("NaN") is None
    assert quantity_of("llama") is None


@given(included_micros=st.integers(0, 10**8), cap_micros=st.one_of(st.none(), st.integers(0, 10**8)),
       price_micros=st.integers(1, 5_000), requests=st.lists(st.integers(1, 10**6), max_size=40))
def test_whatever_is_admitted_never_costs_more_than_credits_plus_cap(
        included_micros: int, cap_micros: int | None, price_micros: int, requests: list[int]) -> None:
    price = UnitPrice(Decimal(price_micros) / 1_000_000, "USD")
    cap = Money(cap_micros // 10_000, "USD") if cap_micros is not None else None
    limits = SpendLimits("m", price, Money(included_micros // 10_000, "USD"),
                         OveragePolicy.BILL if cap is not None else OveragePolicy.BLOCK, cap)
    used = 0
    for quantity in requests:
        decision = decide_spend(limits, used, quantity)
        if decision.allowed:
            used = decision.used_quantity
    budget = limits.included + (cap or Money.zero("USD"))
    # The exact price (not the rounded one) of what was admitted stays within the budget.
    assert Decimal(used) * price.amount <= budget.to_decimal()
    summary = summarise_spend(limits, used)
    assert summary.spend.amount_minor <= (cap.amount_minor if cap else 0)
    assert summary.usage_cost == line_amount(used, price)


def test_visible_spend_counts_each_authorisation_once_whether_materialised_or_not() -> None:
    # 1,000.4 units materialised, of which 300 came from authorisations; 500 authorised in all
    usage = SpendUsage(materialised=Decimal("1000.4"), reserved=500, reserved_materialised=300,
                       other_credit_minor=0)
    assert usage.observed == 701  # a fraction of a unit is never free
    assert usage.visible == 1201


def test_visible_spend_is_never_negative_when_the_worker_lags_behind_the_reservations() -> None:
    usage = SpendUsage(materialised=Decimal(0), reserved=10, reserved_materialised=20, other_credit_minor=0)
    assert (usage.observed, usage.visible) == (0, 10)


def test_a_teams_included_credit_is_pooled_per_seat_and_adds_the_other_grants() -> None:
    pricing = MeterPricing(MeterId("inference"), OveragePolicy.BILL, MICRO,
                           IncludedCredit(Pooling.PER_SEAT, amount=usd("2.00")))
    limits = SpendLimits.of(pricing, "USD", seats=3, other_credit_minor=50, cap_minor=1000, cap_currency="USD")
    assert (limits.included, limits.cap, limits.overage) == (usd("6.50"), usd("10.00"), OveragePolicy.BILL)


def test_a_cap_in_another_currency_than_the_plans_is_ignored() -> None:
    pricing = MeterPricing(MeterId("inference"), OveragePolicy.BILL, MICRO,
                           IncludedCredit(Pooling.ORG, amount=usd("2.00")))
    assert SpendLimits.of(pricing, "USD", seats=1, cap_minor=1000, cap_currency="EUR").cap is None
