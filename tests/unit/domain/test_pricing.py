"""Pricing models (shared/domain/pricing.py): hand-computed at the tier edges, and properties.

The tier table of every example: units 1 - 1,000 at 0.10, 1,001 - 5,000 at 0.08, above 5,000 at 0.05
(``up_to`` inclusive, the last tier unbounded, as Stripe's and Lago's tiers)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.errors import CatalogError
from shared.domain.money import Money
from shared.domain.pricing import PricingModel, Tier, UsagePrice

pytestmark = pytest.mark.unit

TIERS = (Tier(Decimal(1000), Decimal("0.10")), Tier(Decimal(5000), Decimal("0.08")), Tier(None, Decimal("0.05")))
GRADUATED = UsagePrice(PricingModel.GRADUATED, "USD", tiers=TIERS)
VOLUME = UsagePrice(PricingModel.VOLUME, "USD", tiers=TIERS)
PACKAGE = UsagePrice(PricingModel.PACKAGE, "USD", package_size=Decimal(1000), package_price=Decimal("2.00"))


def usd(major: str) -> Money:
    return Money.of(major, "USD")


@pytest.mark.parametrize(("units", "graduated", "volume"), [
    (1000, "100.00", "100.00"),  # 1,000 x 0.10: the last unit of tier 1 (up_to is inclusive)
    (1001, "100.08", "80.08"),  # graduated: 100.00 + 1 x 0.08; volume: all 1,001 at tier 2's 0.08
    (5000, "420.00", "400.00"),  # 100.00 + 4,000 x 0.08 = 420.00; 5,000 x 0.08 = 400.00
    (5001, "420.05", "250.05"),  # 420.00 + 1 x 0.05; 5,001 x 0.05 = 250.05
    (12345, "787.25", "617.25"),  # 420.00 + 7,345 x 0.05 = 787.25; 12,345 x 0.05 = 617.25
])
def test_graduated_and_volume_at_the_tier_edges(units: int, graduated: str, volume: str) -> None:
    assert GRADUATED.total(Decimal(units)) == usd(graduated)
    assert VOLUME.total(Decimal(units)) == usd(volume)


def test_graduated_shows_one_part_per_tier_touched_and_volume_one_part() -> None:
    parts = GRADUATED.charge(Decimal(5001))
    assert [(p.key, p.label, p.quantity, p.amount) for p in parts] == [
        ("tier1", "tier 1 (1 - 1,000)", Decimal(1000), usd("100.00")),
        ("tier2", "tier 2 (1,001 - 5,000)", Decimal(4000), usd("320.00")),
        ("tier3", "tier 3 (above 5,000)", Decimal(1), usd("0.05")),
    ]
    assert [(p.key, p.quantity, p.amount) for p in VOLUME.charge(Decimal(5001))] == [
        ("tier3", Decimal(5001), usd("250.05"))]


@pytest.mark.parametrize(("units", "due"), [(0, "0.00"), (1, "2.00"), (1000, "2.00"), (1001, "4.00")])
def test_package_of_1000_at_2_rounds_a_started_package_up(units: int, due: str) -> None:
    assert PACKAGE.total(Decimal(units)) == usd(due)


def test_flat_fees_are_added_once_per_tier_reached() -> None:
    flat = UsagePrice(PricingModel.GRADUATED, "USD", tiers=(
        Tier(Decimal(1000), Decimal("0.10"), Decimal("5.00")), Tier(None, Decimal("0.08"), Decimal("20.00"))))
    assert flat.total(Decimal(1000)) == usd("105.00")  # 100.00 + 5.00: tier 2 not reached
    assert flat.total(Decimal(1001)) == usd("125.08")  # + 0.08 + 20.00
    volume = UsagePrice(PricingModel.VOLUME, "USD", tiers=flat.tiers)
    assert volume.total(Decimal(1001)) == usd("100.08")  # 1,001 x 0.08 + tier 2's 20.00 only


def test_included_units_are_the_first_units_of_the_period() -> None:
    # graduated: 500 included take positions 1-500; billable 501-1,200: 500 x 0.10 + 200 x 0.08 = 66.00
    assert GRADUATED.total(Decimal(1200), Decimal(500)) == usd("66.00")
    # volume: the total 1,200 selects tier 2; the 700 billable at 0.08 = 56.00
    assert VOLUME.total(Decimal(1200), Decimal(500)) == usd("56.00")
    # package: packages counted on the billable units (Lago's free_units): 1,200 - 500 = 700 -> 1 package
    assert PACKAGE.total(Decimal(1200), Decimal(500)) == usd("2.00")
    assert GRADUATED.total(Decimal(400), Decimal(500)) == usd("0.00")


def test_a_minimum_tops_the_charge_up_also_without_usage() -> None:
    minimum = UsagePrice(PricingModel.PACKAGE, "USD", package_size=Decimal(1000), package_price=Decimal("2.00"),
                         minimum=usd("10.00"))
    assert [(p.key, p.amount) for p in minimum.charge(Decimal(0))] == [("minimum", usd("10.00"))]
    assert [(p.key, p.amount) for p in minimum.charge(Decimal(1001))] == [
        ("packages", usd("4.00")), ("minimum", usd("6.00"))]
    assert [(p.key, p.amount) for p in minimum.charge(Decimal(6000))] == [("packages", usd("12.00"))]


def test_late_units_are_priced_at_their_marginal_position() -> None:
    # 900 billed (90.00); 200 late: 100 more in tier 1 and 100 in tier 2 -> 10.00 + 8.00 = 18.00 (108.00 in all)
    assert [(p.key, p.quantity, p.amount) for p in GRADUATED.marginal((Decimal(900), Decimal(0)),
                                                                      (Decimal(1100), Decimal(0)))] == [
        ("tier1", Decimal(100), usd("10.00")), ("tier2", Decimal(100), usd("8.00"))]
    # volume: 1,000 billed at tier 1 (100.00); 1 late moves all 1,001 to tier 2: +80.08 and -100.00
    assert [(p.key, p.quantity, p.amount) for p in VOLUME.marginal((Decimal(1000), Decimal(0)),
                                                                   (Decimal(1001), Decimal(0)))] == [
        ("tier2", Decimal(1001), usd("80.08")), ("tier1", Decimal(-1000), usd("-100.00"))]
    # package: 1,000 billed (2.00); 1 late starts a second package: +2.00
    assert [p.amount for p in PACKAGE.marginal((Decimal(1000), Decimal(0)), (Decimal(1001), Decimal(0)))] == [
        usd("2.00")]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": PricingModel.GRADUATED, "tiers": ()}, "at least one tier"),
    ({"model": PricingModel.GRADUATED, "tiers": (Tier(Decimal(10)),)}, "tiers[0].up_to: the last tier must be"),
    ({"model": PricingModel.VOLUME, "tiers": (Tier(None), Tier(None))}, "tiers[0].up_to: only the last"),
    ({"model": PricingModel.VOLUME, "tiers": (Tier(Decimal(10)), Tier(Decimal(10)), Tier(None))},
     "tiers[1].up_to: 10 must be greater than 10"),
    ({"model": PricingModel.PACKAGE, "package_size": Decimal("0.5"), "package_price": Decimal(1)}, "whole number"),
    ({"model": PricingModel.PER_UNIT, "unit_price": Decimal(-1)}, "unit_price >= 0"),
])
def test_malformed_prices_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogError, match=message.replace("[", r"\[").replace("]", r"\]")):
        UsagePrice(currency="USD", **kwargs)  # type: ignore[arg-type]


# --- properties --------------------------------------------------------------------------------------

_price = st.decimals(min_value=Decimal(0), max_value=Decimal(5), places=4)
_units = st.decimals(min_value=Decimal(0), max_value=Decimal(20000), places=2)


@st.composite
def tiers(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(set(draw(st.lists(st.integers(1, 10000), min_size=0, max_size=4))))
    ups: list[Decimal | None] = [Decimal(b) for b in bounds]
    ups.append(None)
    return tuple(Tier(up, draw(_price), draw(st.sampled_from([Decimal(0), Decimal("1.50"), Decimal(20)])))
                 for up in ups)


def _exact_graduated(tiers_: tuple[Tier, ...], quantity: Decimal) -> tuple[Fraction, list[Fraction]]:
    """Σ units_in_tier x price + flat fees, exact, and each tier's exact amount (an independent oracle)."""
    low, parts = Decimal(0), []
    for tier in tiers_:
        high = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = max(Decimal(0), high - low)
        if units > 0:
            parts.append(Fraction(units) * Fraction(tier.unit_price) + Fraction(tier.flat_fee))
        if tier.up_to is None or quantity <= tier.up_to:
            break
        low = tier.up_to
    return sum(parts, Fraction(0)), parts


@settings(max_examples=300, deadline=None)
@given(tiers(), _units)
def test_graduated_never_charges_more_than_its_tier_prices(tiers_: tuple[Tier, ...], quantity: Decimal) -> None:
    price = UsagePrice(PricingModel.GRADUATED, "USD", tiers=tiers_)
    exact, parts = _exact_graduated(tiers_, quantity)
    charged = price.total(quantity).amount_minor
    # each part rounded once (half up) to the cent: never above the sum of the tier prices rounded up
    assert charged <= sum(math.ceil(p * 100) for p in parts)
    assert abs(Fraction(charged) - exact * 100) <= Fraction(len(parts), 2)
    top = max(t.unit_price for t in tiers_)
    assert charged <= math.ceil(Fraction(quantity) * Fraction(top) * 100) + len(parts) + sum(
        int(t.flat_fee * 100) for t in tiers_)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([PricingModel.GRADUATED, PricingModel.VOLUME, PricingModel.PACKAGE, PricingModel.PER_UNIT]),
       tiers(), _units, _units, st.decimals(min_value=Decimal(0), max_value=Decimal(3000), places=0),
       st.integers(1, 2500), st.sampled_from([None, Money(0, "USD"), Money(5000, "USD"), Money(123457, "USD")]))
def test_rating_a_then_b_late_equals_rating_a_plus_b_at_once(
        model: PricingModel, tiers_: tuple[Tier, ...], a: Decimal, b: Decimal, included: Decimal, size: int,
        minimum: Money | None) -> None:
    price = UsagePrice(model, "USD", unit_price=Decimal("0.0137"), package_size=Decimal(size),
                       package_price=Decimal("2.00"), tiers=tiers_, minimum=minimum)
    included_a = min(included, a)  # included units drawn first, then the late units draw the rest
    included_ab = min(included, a + b)
    at_once = price.total(a + b, included_ab)
    first = price.total(a, included_a)
    late = sum((p.amount.amount_minor for p in price.marginal((a, included_a), (a + b, included_ab))), 0)
    assert first.amount_minor + late == at_once.amount_minor


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 100000), st.integers(1, 5000))
def test_package_rounds_up_to_whole_packages(units: int, size: int) -> None:
    price = UsagePrice(PricingModel.PACKAGE, "USD", package_size=Decimal(size), package_price=Decimal("2.00"))
    assert price.total(Decimal(units)) == Money(200 * -(-units // size), "USD")
