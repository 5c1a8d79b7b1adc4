from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.errors import CurrencyMismatchError, DomainError, InvalidValueError, UnknownCurrencyError
from shared.domain.money import Money, UnitPrice, line_amount, minor_units, sum_money

pytestmark = pytest.mark.unit

CURRENCIES = st.sampled_from(["JPY", "USD", "EUR", "BHD", "KWD"])


def test_minor_units_follow_iso_4217():
    assert [minor_units(code) for code in ("JPY", "USD", "EUR", "GBP", "BHD", "KWD", "JOD")] == [0, 2, 2, 2, 3, 3, 3]


def test_unknown_currency_is_a_typed_domain_error():
    with pytest.raises(UnknownCurrencyError):
        Money(100, "XYZ")
    assert issubclass(UnknownCurrencyError, DomainError)


def test_adding_amounts_in_different_currencies_raises_currency_mismatch():
    with pytest.raises(CurrencyMismatchError) as error:
        Money(100, "USD") + Money(100, "EUR")
    assert "USD" in str(error.value) and "EUR" in str(error.value)
    assert isinstance(error.value, DomainError)


def test_comparing_amounts_in_different_currencies_raises_currency_mismatch():
    with pytest.raises(CurrencyMismatchError):
        _ = Money(100, "USD") < Money(100, "EUR")


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Money(1.5, "USD"),  # type: ignore[arg-type]
        lambda: Money.of(9.99, "USD"),  # type: ignore[arg-type]
        lambda: Money(100, "USD") * 1.5,  # type: ignore[operator]
        lambda: Money(100, "USD").scale(0.5),  # type: ignore[arg-type]
        lambda: UnitPrice(0.1, "USD"),  # type: ignore[arg-type]
        lambda: line_amount(1.5, UnitPrice.of("1", "USD")),  # type: ignore[arg-type]
    ],
)
def test_floats_are_rejected_everywhere(bad):
    with pytest.raises(TypeError):
        bad()


def test_of_rounds_half_away_from_zero_to_the_currency_precision():
    assert Money.of("9.995", "USD") == Money(1000, "USD")
    assert Money.of("-0.005", "USD") == Money(-1, "USD")
    assert Money.of("1234.5", "JPY") == Money(1235, "JPY")
    assert Money.of("1.2345", "BHD") == Money(1235, "BHD")


def test_arithmetic_and_predicates():
    ten, three = Money(1000, "USD"), Money(300, "USD")
    assert ten - three == Money(700, "USD")
    assert -three == Money(-300, "USD")
    assert three * 3 == Money(900, "USD") == 3 * three
    assert Money.zero("USD").is_zero() and (-three).is_negative() and three < ten


def test_sub_cent_unit_price_rounds_once_per_line():
    per_token = UnitPrice.of("0.0000012", "USD")
    assert line_amount(1_000_000, per_token) == Money(120, "USD")
    # 4166 tokens are USD 0.0049992: a single rounding gives 0.00, not 4166 x (rounded 0.00).
    assert line_amount(4166, per_token) == Money(0, "USD")
    assert line_amount(4167, per_token) == Money(1, "USD")  # 0.0050004 -> 0.01


def test_format_reads_like_an_invoice():
    assert Money(123456789, "USD").format() == "USD 1,234,567.89"
    assert Money(-500, "JPY").format() == "-JPY 500"
    assert Money(1005, "BHD").format() == "BHD 1.005"


def test_allocate_gives_leftover_minor_units_to_the_largest_remainders():
    assert Money(100, "USD").allocate([1, 1, 1]) == [Money(34, "USD"), Money(33, "USD"), Money(33, "USD")]
    assert Money(5, "USD").allocate([3, 7]) == [Money(2, "USD"), Money(3, "USD")]
    assert Money(-100, "USD").allocate([1, 1, 1]) == [Money(-34, "USD"), Money(-33, "USD"), Money(-33, "USD")]


def test_allocate_rejects_meaningless_ratios():
    with pytest.raises(InvalidValueError):
        Money(100, "USD").allocate([])
    with pytest.raises(InvalidValueError):
        Money(100, "USD").allocate([0, 0])
    with pytest.raises(InvalidValueError):
        Money(100, "USD").allocate([1, -1])


@given(
    amount=st.integers(min_value=-(10**12), max_value=10**12),
    currency=CURRENCIES,
    ratios=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=12).filter(any),
)
def test_allocate_never_loses_or_creates_a_minor_unit(amount, currency, ratios):
    parts = Money(amount, currency).allocate(ratios)
    assert sum_money(parts, currency) == Money(amount, currency)
    total = sum(ratios)
    for part, ratio in zip(parts, ratios, strict=True):
        exact = Fraction(amount * ratio, total)
        assert abs(Fraction(part.amount_minor) - exact) < 1


@given(amount=st.integers(min_value=-(10**12), max_value=10**12), factor=st.fractions(min_value=-10, max_value=10))
def test_scale_is_within_half_a_minor_unit_and_symmetric(amount, factor):
    money = Money(amount, "USD")
    scaled = money.scale(factor)
    assert abs(Fraction(scaled.amount_minor) - amount * factor) <= Fraction(1, 2)
    assert (-money).scale(factor) == -scaled


@given(
    quantity=st.decimals(min_value=0, max_value=10**9, places=6),
    price=st.decimals(min_value=0, max_value=100, places=8),
)
def test_line_amount_is_the_exact_product_rounded_once(quantity, price):
    amount = line_amount(quantity, UnitPrice(price, "USD"))
    exact = quantity * price * 100
    assert abs(Decimal(amount.amount_minor) - exact) <= Decimal("0.5")
