"""The rules a usage event must meet wherever it enters: the HTTP edge, the producer SDK and the worker.

One module so that "accepted" means the same everywhere: what the edge or the SDK accepts, the worker
stores and a period close bills; what they refuse, the worker dead-letters (with the same reason code)
when a producer writes it straight to Kafka. Plain functions over plain values (no pydantic, no I/O).

The bounds, and why:

- **Identifiers**: `transaction_id`, `customer_id`, `subscription_id` 1..128 characters, `event_type`
  1..100, never U+0000 (PostgreSQL text cannot hold it; longer ids would only bloat the dedupe index,
  whose rows PostgreSQL caps at about 2,700 bytes).
- **Timestamps**: an event's `timestamp` lies in [received - MAX_EVENT_AGE, received + MAX_EVENT_LEAD],
  where `received` is when the edge (or the SDK) took it: older events would land in a period that is
  invoiced, future ones in a bucket no close bills yet. The worker applies the same window at the message's
  `received_at`, and refuses a `received_at` later than its billing clock + MAX_EVENT_LEAD, so a producer
  cannot move the window by claiming a future reception. Every instant must have a UTC equivalent
  (`9999-12-31T23:59:59-01:00` has none).
- **Numeric properties** (JSON numbers and strings holding a decimal number; the metered quantity is one
  of them): finite, >= 0, < MAX_QUANTITY (10^19: every non-negative 64-bit integer, so identifiers and
  timestamps sent as numbers pass) and at most QUANTITY_DECIMALS (9) decimal places. A quantity therefore
  has at most 28 significant digits, the precision of Python's default Decimal context that period
  closes compute in, so each one is exact there; PostgreSQL `numeric` stores and sums it exactly. A JSON
  float is read through its shortest repr (0.1 -> 0.1): 0.1 + 0.2 (0.30000000000000004) has 17 decimals
  and is refused; send a rounded value or a decimal string.
- **Property shape**: values nest at most MAX_PROPERTY_DEPTH levels and hold at most MAX_PROPERTY_VALUES
  values in all (a 990-level property used to end in RecursionError); only JSON values.
- **Card numbers**: a string property that is a card number written as such (`is_card_number`) is
  refused, never echoed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from shared.contracts.card_numbers import is_card_number
from shared.domain.quantity import DECIMAL_STARTS
from shared.domain.quantity import may_be_decimal as may_be_decimal  # re-exported: the one parser
from shared.domain.quantity import number_of as number_of

# NOTE: 34 days covers a calendar month closed a few days late; older events would land in a period
# that is already invoiced. Five minutes ahead tolerates producer clock skew, not future-dated usage.
MAX_EVENT_AGE: Final = timedelta(days=34)
MAX_EVENT_LEAD: Final = timedelta(minutes=5)
MAX_ID_LENGTH: Final = 128
MAX_EVENT_TYPE_LENGTH: Final = 100
MAX_QUANTITY: Final = 10**19
QUANTITY_DECIMALS: Final = 9
MAX_PROPERTY_DEPTH: Final = 8
MAX_PROPERTY_VALUES: Final = 1000

_MAX_QUANTITY_DECIMAL: Final = Decimal(MAX_QUANTITY)
_MAX_QUANTITY_FLOAT: Final = float(MAX_QUANTITY)
_TOO_LARGE: Final = "must be less than 10^19"


@dataclass(frozen=True, slots=True)
class UsageProblem:
    """Why an event is refused: the field at fault, a sentence, and a stable machine-readable code."""

    field: str
    reason: str
    code: str

    def __str__(self) -> str:
        return f"{self.code}: {self.field}: {self.reason}"


# ----------------------------------------------------------------------------------------------- instants


def as_utc(at: datetime) -> datetime | None:
    """`at` in UTC, or None when it has no UTC equivalent (year 9999 west of UTC, year 1 east of it)."""
    try:
        return at.astimezone(UTC)
    except OverflowError:
        return None


_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
_LATEST: Final = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class EventWindow:
    """The timestamps accepted for events received at one instant: [received - MAX_EVENT_AGE,
    received + MAX_EVENT_LEAD]. Build it once per batch (or per distinct `received_at`)."""

    oldest: datetime
    latest: datetime

    @classmethod
    def at(cls, received: datetime) -> EventWindow:
        try:
            oldest = received - MAX_EVENT_AGE
        except OverflowError:
            oldest = _EARLIEST
        try:
            latest = received + MAX_EVENT_LEAD
        except OverflowError:
            latest = _LATEST
        return cls(oldest, latest)

    def problem(self, timestamp: datetime, field: str = "timestamp") -> UsageProblem | None:
        """Is `timestamp` (aware) inside the window?"""
        if timestamp < self.oldest:
            return UsageProblem(field, f"older than {MAX_EVENT_AGE.days} days", "timestamp_too_old")
        if timestamp > self.latest:
            return UsageProblem(field, "more than 5 minutes in the future", "timestamp_in_future")
        return None


def received_at_problem(received_at: datetime, now: datetime) -> UsageProblem | None:
    """The worker's check of a message's `received_at` against its billing clock's `now`."""
    if received_at > EventWindow.at(now).latest:
        return UsageProblem("received_at", "later than the billing clock (+5 minutes)", "received_in_future")
    return None


# ----------------------------------------------------------------------------------------------- identifiers


def identifier_problem(field: str, value: object, max_length: int = MAX_ID_LENGTH) -> UsageProblem | None:
    if type(value) is not str or not value:
        return UsageProblem(field, "must be a non-empty string", "invalid_identifier")
    if len(value) > max_length:
        return UsageProblem(field, f"longer than {max_length} characters", "invalid_identifier")
    if "\x00" in value:
        return UsageProblem(field, "must not contain U+0000", "invalid_identifier")
    return None


def key_problem(key: bytes | None, subscription_id: str) -> UsageProblem | None:
    """The single-writer rule: a usage message is keyed by the subscription it bills."""
    if key is None or key != subscription_id.encode():
        return UsageProblem("key", "the Kafka message key must be payload.subscription_id", "key_mismatch")
    return None


# ----------------------------------------------------------------------------------------------- numbers

# Reading a number (the one quantity parser) is the domain's: shared.domain.quantity.
_DECIMAL_STARTS: Final = DECIMAL_STARTS


def quantity_problem(number: Decimal, field: str) -> UsageProblem | None:
    """Is `number` a quantity the worker stores exactly and a close bills (see the module docstring)?"""
    if not number.is_finite():
        return UsageProblem(field, "must be a finite number", "invalid_property")
    if number < 0:
        return UsageProblem(field, "must not be negative", "invalid_property")
    if number >= _MAX_QUANTITY_DECIMAL:
        return UsageProblem(field, _TOO_LARGE, "quantity_out_of_range")
    _, digits, exponent = number.as_tuple()
    if type(exponent) is int and exponent < -QUANTITY_DECIMALS:
        trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
        if any(digits) and exponent + trailing_zeros < -QUANTITY_DECIMALS:
            return UsageProblem(field, f"more than {QUANTITY_DECIMALS} decimal places", "quantity_too_precise")
    return None


def _int_problem(value: int, field: str) -> UsageProblem | None:
    if value < 0:
        return UsageProblem(field, "must not be negative", "invalid_property")
    if value >= MAX_QUANTITY:
        return UsageProblem(field, _TOO_LARGE, "quantity_out_of_range")
    return None


def _float_problem(value: float, field: str) -> UsageProblem | None:
    if value.is_integer() and 0 <= value < _MAX_QUANTITY_FLOAT:
        return None  # the common float: a whole number in range, exact without a Decimal
    return quantity_problem(number_of(value) or Decimal("NaN"), field)


# ----------------------------------------------------------------------------------------------- properties


def _card(field: str) -> UsageProblem:
    return UsageProblem(field, "looks like a payment card number; send a token, never a card number", "card_number")


def _nul(field: str) -> UsageProblem:
    return UsageProblem(field, "must not contain U+0000", "invalid_property")


def _not_json(field: str, value: object) -> UsageProblem:
    return UsageProblem(field, f"must be a JSON value, got {type(value).__name__}", "invalid_property")


def properties_problem(properties: Mapping[str, Any]) -> UsageProblem | None:
    """The first problem with an event's properties (see the module docstring), or None.

    Top-level numbers (and decimal strings) are quantities and must meet `quantity_problem`; nested values
    are only checked for shape, U+0000 and card numbers (no meter reads them). The field named is the
    top-level property, whatever the depth of the value at fault."""
    if len(properties) > MAX_PROPERTY_VALUES:
        return UsageProblem("properties", f"more than {MAX_PROPERTY_VALUES} values", "properties_too_large")
    nested: list[tuple[str, object]] | None = None
    largest = MAX_QUANTITY
    for name, value in properties.items():  # names are str: JSON object keys, or UsageEvent's dict[str, Any]
        kind = type(value)
        if kind is int:  # the common cases first, without a Decimal
            if value < 0 or value >= largest:
                return _int_problem(value, f"properties.{name}")
        elif kind is str:
            if len(value) >= 13 and is_card_number(value):
                return _card(f"properties.{name}")
            # most strings are names (a model, a region): their first character rules a number out
            if value and (value[0] in _DECIMAL_STARTS or not value[0].isascii() or value[0].isspace()) \
                    and may_be_decimal(value):
                number = number_of(value)
                if number is not None:
                    problem = quantity_problem(number, f"properties.{name}")
                    if problem is not None:
                        return problem
            if "\x00" in value:
                return _nul(f"properties.{name}")
        elif kind is float:
            problem = _float_problem(value, f"properties.{name}")
            if problem is not None:
                return problem
        elif kind is dict or kind is list:
            if nested is None:
                nested = []
            nested.append((name, value))
        elif value is not None and kind is not bool:
            return _not_json(f"properties.{name}", value)
        if "\x00" in name:
            return _nul(f"properties.{name}")
    if nested is not None:
        return _nested_problem(nested, len(properties))
    return None


def _nested_problem(nested: list[tuple[str, object]], counted: int) -> UsageProblem | None:
    """Walk nested property values iteratively (a deep value must not exhaust Python's stack)."""
    for name, root in nested:
        field = f"properties.{name}"
        stack: list[tuple[object, int]] = [(root, 1)]
        while stack:
            value, depth = stack.pop()
            kind = type(value)
            if kind is dict or kind is list:
                if depth > MAX_PROPERTY_DEPTH:
                    return UsageProblem(field, f"nested deeper than {MAX_PROPERTY_DEPTH} levels",
                                        "properties_too_deep")
                items: Any = value
                if kind is dict:
                    for key in items:
                        if type(key) is not str:
                            return UsageProblem(field, "object keys must be strings", "invalid_property")
                        if "\x00" in key:
                            return _nul(field)
                    items = items.values()
                for item in items:
                    counted += 1
                    if counted > MAX_PROPERTY_VALUES:
                        return UsageProblem("properties", f"more than {MAX_PROPERTY_VALUES} values",
                                            "properties_too_large")
                    stack.append((item, depth + 1))
            elif kind is str:
                if "\x00" in value:  # type: ignore[operator]
                    return _nul(field)
                if is_card_number(value):  # type: ignore[arg-type]
                    return _card(field)
            elif kind is float:
                if not math.isfinite(value):  # type: ignore[arg-type]
                    return UsageProblem(field, "must be a finite number", "invalid_property")
            elif kind is int:
                if not -2**63 <= value < 2**64:  # type: ignore[operator]
                    return UsageProblem(field, "integers must fit in 64 bits", "invalid_property")
            elif value is not None and kind is not bool:
                return _not_json(field, value)
    return None
