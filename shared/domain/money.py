"""Money as integer minor units plus an ISO 4217 currency; Decimal only for unit prices.

Contract:
- ``Money`` never holds a fraction of a minor unit; arithmetic between two amounts requires the same
  currency (``CurrencyMismatchError`` otherwise).
- Rounding happens in exactly three places, each once per line and always with ``ROUNDING``:
  ``Money.of`` (a major-unit Decimal), ``line_amount`` (quantity x unit price) and ``Money.scale``
  (a rational factor such as a proration fraction or a tax rate).
- Floats are rejected with ``TypeError`` everywhere: they cannot represent 0.1 exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from fractions import Fraction
from typing import Final

from shared.domain.errors import CurrencyMismatchError, InvalidValueError, UnknownCurrencyError

# NOTE: one rounding mode for the whole engine: half away from zero (Decimal's ROUND_HALF_UP).
# It is what most invoicing and tax rules expect ("0.005 rounds to 0.01") and it is symmetric for
# credits, so a proration credit and the matching charge round to the same magnitude.
ROUNDING: Final = ROUND_HALF_UP

# Enough precision that quantity x unit price is exact before the single quantize step.
_EXACT: Final = Context(prec=80, rounding=ROUNDING)

_ZERO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DECIMALS = "CLF UYW"
_TWO_DECIMALS = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ "
    "GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA "
    "MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR "
    "RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD "
    "TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWL"
)

#: ISO 4217 currency code -> number of decimal places of its minor unit.
MINOR_UNITS: Final[dict[str, int]] = {
    **{code: 2 for code in _TWO_DECIMALS.split()},
    **{code: 0 for code in _ZERO_DECIMALS.split()},
    **{code: 3 for code in _THREE_DECIMALS.split()},
    **{code: 4 for code in _FOUR_DECIMALS.split()},
}

# One immutable zero per currency (``Money.zero`` is called on every sum and comparison).
_ZEROS: Final[dict[str, Money]] = {}


def minor_units(currency: str) -> int:
    """Decimal places of ``currency``'s minor unit (JPY 0, USD 2, BHD 3); raises for unknown codes."""
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        raise UnknownCurrencyError(f"unknown ISO 4217 currency code {currency!r}") from None


def _require_currency(currency: object) -> str:
    if not isinstance(currency, str):
        raise TypeError(f"currency must be a str, got {type(currency).__name__}")
    minor_units(currency)
    return currency


def _require_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    return value


def _to_decimal(value: object, what: str) -> Decimal:
    """Accept Decimal, int or a numeric string; reject float and anything non-finite."""
    if isinstance(value, float):
        raise TypeError(f"{what} must not be a float (use Decimal or str)")
    if isinstance(value, bool):
        raise TypeError(f"{what} must not be a bool")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidValueError(f"{what} {value!r} is not a decimal number") from None
    else:
        raise TypeError(f"{what} must be Decimal, int or str, got {type(value).__name__}")
    if not result.is_finite():
        raise InvalidValueError(f"{what} must be finite, got {value!r}")
    return result


_QUANTA: Final[dict[str, Decimal]] = {code: Decimal(1).scaleb(-digits) for code, digits in MINOR_UNITS.items()}


def _quantum(currency: str) -> Decimal:
    quantum = _QUANTA.get(currency) if type(currency) is str else None
    return quantum if quantum is not None else Decimal(1).scaleb(-minor_units(currency))


def _round_fraction(value: Fraction) -> int:
    """Round a rational to the nearest integer, halves away from zero (same mode as ``ROUNDING``)."""
    return _round_ratio(value.numerator, value.denominator)


def _round_ratio(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` (denominator > 0) rounded to an integer, halves away from zero, in
    integer arithmetic (exact, and much cheaper than building a ``Fraction``)."""
    whole, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        whole += 1
    return whole if numerator >= 0 else -whole


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: integer minor units (cents, yen, fils) of one ISO 4217 currency."""

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # NOTE: the exact-type check is the common case and costs two lookups; anything else (bool, an int
        # subclass, an unknown or non-str currency) takes the full checks and their precise errors.
        if type(self.amount_minor) is int and type(self.currency) is str and self.currency in MINOR_UNITS:
            return
        _require_int(self.amount_minor, "amount_minor")
        _require_currency(self.currency)

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def zero(cls, currency: str) -> Money:
        if cls is Money and type(currency) is str:
            zero = _ZEROS.get(currency)
            if zero is None:
                zero = _ZEROS[currency] = cls(0, currency)
            return zero
        return cls(0, currency)

    @classmethod
    def of(cls, major: Decimal | str | int, currency: str) -> Money:
        """Build from major units (``Money.of("9.99", "USD")``), rounding once to the minor unit."""
        amount = _to_decimal(major, "amount")
        quantized = amount.quantize(_quantum(currency), rounding=ROUNDING, context=_EXACT)
        return cls(int(quantized.scaleb(minor_units(currency), context=_EXACT)), currency)

    # --- arithmetic -------------------------------------------------------------------------------

    def _same_currency(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"expected Money, got {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatchError(self.currency, other.currency)

    def __add__(self, other: Money) -> Money:
        if type(other) is not Money or other.currency != self.currency:
            self._same_currency(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        if type(other) is not Money or other.currency != self.currency:
            self._same_currency(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __abs__(self) -> Money:
        return Money(abs(self.amount_minor), self.currency)

    def __mul__(self, factor: int) -> Money:
        """Multiply by a whole number (seats, periods). Use ``scale`` for fractions."""
        return Money(self.amount_minor * _require_int(factor, "factor"), self.currency)

    __rmul__ = __mul__

    def scale(self, factor: Fraction | Decimal | int) -> Money:
        """Multiply by an exact rational (proration fraction, tax rate), rounding once."""
        if isinstance(factor, float):
            raise TypeError("factor must not be a float (use Fraction or Decimal)")
        if isinstance(factor, bool):
            raise TypeError("factor must not be a bool")
        if isinstance(factor, Decimal) and not factor.is_finite():
            raise InvalidValueError(f"factor must be finite, got {factor!r}")
        if not isinstance(factor, Fraction | Decimal | int):
            raise TypeError(f"factor must be Fraction, Decimal or int, got {type(factor).__name__}")
        if isinstance(factor, int):
            return Money(self.amount_minor * factor, self.currency)
        numerator, denominator = factor.as_integer_ratio()
        return Money(_round_ratio(self.amount_minor * numerator, denominator), self.currency)

    def allocate(self, ratios: Sequence[int]) -> list[Money]:
        """Split by integer ratios without losing a minor unit (largest remainder method).

        The parts always sum to ``self``. Leftover minor units go to the parts with the largest
        fractional remainder; ties go to the earlier part, so the result is deterministic.
        """
        if not ratios:
            raise InvalidValueError("allocate needs at least one ratio")
        for ratio in ratios:
            _require_int(ratio, "ratio")
            if ratio < 0:
                raise InvalidValueError(f"ratios must be non-negative, got {ratio}")
        total_ratio = sum(ratios)
        if total_ratio == 0:
            raise InvalidValueError("ratios must not all be zero")
        magnitude = abs(self.amount_minor)
        shares = [divmod(magnitude * ratio, total_ratio) for ratio in ratios]
        parts = [whole for whole, _ in shares]
        leftover = magnitude - sum(parts)
        by_remainder = sorted(range(len(ratios)), key=lambda i: (-shares[i][1], i))
        for index in by_remainder[:leftover]:
            parts[index] += 1
        sign = -1 if self.amount_minor < 0 else 1
        return [Money(sign * part, self.currency) for part in parts]

    # --- comparison (same currency only) ------------------------------------------------------------

    def __lt__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount_minor < other.amount_minor

    def __le__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount_minor <= other.amount_minor

    def __gt__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount_minor > other.amount_minor

    def __ge__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount_minor >= other.amount_minor

    def is_zero(self) -> bool:
        return self.amount_minor == 0

    def is_negative(self) -> bool:
        return self.amount_minor < 0

    def is_positive(self) -> bool:
        return self.amount_minor > 0

    def min(self, other: Money) -> Money:
        return self if self <= other else other

    def max(self, other: Money) -> Money:
        return self if self >= other else other

    # --- presentation -----------------------------------------------------------------------------

    def to_decimal(self) -> Decimal:
        """The exact amount in major units (``Decimal("12.34")`` for 1234 USD cents)."""
        return Decimal(self.amount_minor).scaleb(-minor_units(self.currency))

    def format(self) -> str:
        """Human form with the currency code and grouping: ``USD 1,234.50``, ``-JPY 500``."""
        digits = minor_units(self.currency)
        whole, fraction = divmod(abs(self.amount_minor), 10**digits)
        sign = "-" if self.amount_minor < 0 else ""
        text = f"{whole:,}" if digits == 0 else f"{whole:,}.{fraction:0{digits}d}"
        return f"{sign}{self.currency} {text}"

    def __str__(self) -> str:
        return self.format()


def sum_money(amounts: Iterable[Money], currency: str) -> Money:
    """Sum amounts of one currency; an empty iterable gives zero in ``currency``."""
    total = Money.zero(currency)
    minor = 0
    for amount in amounts:
        if type(amount) is not Money or amount.currency != currency:
            total._same_currency(amount)  # raises the precise error
        minor += amount.amount_minor
    return Money(minor, currency) if minor else total


@dataclass(frozen=True, slots=True)
class UnitPrice:
    """A per-unit price as an exact Decimal in major units; may be finer than the minor unit.

    ``UnitPrice(Decimal("0.0000012"), "USD")`` is USD 0.0000012 per token. It becomes ``Money`` only
    through ``line_amount``, which rounds once.
    """

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if type(self.amount) is Decimal and type(self.currency) is str and self.currency in MINOR_UNITS:
            if self.amount.is_finite():
                return
        if isinstance(self.amount, float) or not isinstance(self.amount, Decimal):
            raise TypeError(f"UnitPrice.amount must be a Decimal, got {type(self.amount).__name__}")
        if not self.amount.is_finite():
            raise InvalidValueError(f"unit price must be finite, got {self.amount!r}")
        _require_currency(self.currency)

    @classmethod
    def of(cls, amount: Decimal | str | int, currency: str) -> UnitPrice:
        return cls(_to_decimal(amount, "unit price"), currency)

    @classmethod
    def from_money(cls, money: Money) -> UnitPrice:
        return cls(money.to_decimal(), money.currency)

    def format(self) -> str:
        return f"{self.currency} {self.amount.normalize():f}"


def line_amount(quantity: Decimal | int, unit_price: UnitPrice) -> Money:
    """quantity x unit price, exact, then rounded once to the currency's minor unit with ``ROUNDING``."""
    exact = _EXACT.multiply(
        quantity if type(quantity) is Decimal else _to_decimal(quantity, "quantity"), unit_price.amount
    )
    if not exact.is_finite():
        raise InvalidValueError(f"amount must be finite, got {exact!r}")
    currency = unit_price.currency
    quantized = exact.quantize(_quantum(currency), rounding=ROUNDING, context=_EXACT)
    return Money(int(quantized.scaleb(minor_units(currency), context=_EXACT)), currency)
