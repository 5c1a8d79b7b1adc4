"""The usage event as producers send it (Metronome's ingest shape) and the checks that need no lookup.

Shared by the HTTP edge, the producer SDK (`shared.sdk.client`) and anyone writing straight to Kafka, so
that an event refused by one path is refused by all. Checks that need the customer (is it known, does
its plan meter this event type) are the edge's and the worker's.

Shape: `{"transaction_id", "customer_id", "event_type", "timestamp" (RFC 3339 with offset),
"properties": {...}}`. Numeric properties (JSON numbers, or strings holding a decimal number, which is
how fractional quantities such as `gb_months` should be sent to stay exact) must be finite and >= 0.

Hot path: `validated_event` checks the common exact shape (plain dict, str fields, RFC 3339 string or
aware datetime) without building a pydantic model, and hands anything else to `UsageEvent` itself, so
the accepted set and the error messages stay exactly UsageEvent's (`tests/unit/edge/test_fast_events.py`
compares both on tricky inputs). Checked events are `ValidEvent` tuples carrying the UTC timestamp text
written on the wire.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NamedTuple

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# NOTE: 34 days covers a calendar month closed a few days late; older events would land in a period
# that is already invoiced. Five minutes ahead tolerates producer clock skew, not future-dated usage.
MAX_EVENT_AGE = timedelta(days=34)
MAX_EVENT_LEAD = timedelta(minutes=5)
MAX_BATCH_EVENTS = 1000
# PostgreSQL text and JSONB cannot hold U+0000; an identifier carrying one could never be stored.
NO_NUL = r"^[^\x00]*$"


class UsageEvent(BaseModel):
    """One usage event in Metronome's ingest shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: str = Field(min_length=1, max_length=128, pattern=NO_NUL,
                                description="the producer's unique id (dedupe key)")
    customer_id: str = Field(min_length=1, max_length=128, pattern=NO_NUL,
                             description="our customer id or an ingest alias")
    event_type: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    timestamp: AwareDatetime = Field(description="RFC 3339 with a UTC offset")
    properties: dict[str, Any] = Field(default_factory=dict)


class ValidEvent(NamedTuple):
    """A usage event that passed UsageEvent's validation (a tuple: one is built per event on the hot path).

    `timestamp_utc` is the timestamp in UTC as RFC 3339 text (`...Z`), the form written on `usage.v1`."""

    transaction_id: str
    customer_id: str
    event_type: str
    timestamp: datetime
    timestamp_utc: str
    properties: dict[str, Any]

    @classmethod
    def of(cls, event: UsageEvent) -> ValidEvent:
        return cls(event.transaction_id, event.customer_id, event.event_type, event.timestamp,
                   utc_text(event.timestamp), dict(event.properties))

    def as_json(self) -> dict[str, Any]:
        """The event in the producers' shape (what UsageEvent.model_dump(mode="json") gives)."""
        return {"transaction_id": self.transaction_id, "customer_id": self.customer_id,
                "event_type": self.event_type, "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
                "properties": self.properties}


def utc_text(at: datetime) -> str:
    """RFC 3339 in UTC with `Z`, as every timestamp on the wire is written."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


_FIELDS: Final = frozenset({"transaction_id", "customer_id", "event_type", "timestamp", "properties"})
_REQUIRED: Final = frozenset({"transaction_id", "customer_id", "event_type", "timestamp"})
# The strict RFC 3339 subset that both pydantic and datetime.fromisoformat read the same way (ASCII
# digits only; up to microseconds); anything else goes to UsageEvent.
_RFC3339: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                             r"(?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")


@functools.lru_cache(maxsize=8192)
def _timestamp_of_text(text: str) -> tuple[datetime, str] | None:
    # Cached: a batch's events often share a timestamp (producers stamp at second or millisecond resolution).
    if _RFC3339.fullmatch(text) is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:  # e.g. February 30th, hour 24: UsageEvent says what is wrong
        return None
    return at, utc_text(at)


@functools.lru_cache(maxsize=8192)
def _timestamp_of_datetime(at: datetime) -> tuple[datetime, str]:
    return at, utc_text(at)


def _timestamp_of(value: object) -> tuple[datetime, str] | None:
    if type(value) is str:
        return _timestamp_of_text(value)
    if type(value) is datetime and value.tzinfo is not None and value.utcoffset() is not None:
        return _timestamp_of_datetime(value)
    return None


def _text_ok(value: object, max_length: int) -> bool:
    return type(value) is str and 0 < len(value) <= max_length and "\x00" not in value


def fast_event(raw: object) -> ValidEvent | None:
    """`raw` as a ValidEvent when it has the common exact shape UsageEvent accepts; None means "ask
    UsageEvent" (which may accept it too, or say precisely what is wrong). Never accepts what UsageEvent
    would refuse."""
    if type(raw) is not dict:
        return None
    keys = raw.keys()
    if not (keys <= _FIELDS and keys >= _REQUIRED):
        return None
    transaction_id, customer_id, event_type = raw["transaction_id"], raw["customer_id"], raw["event_type"]
    if not (_text_ok(transaction_id, 128) and _text_ok(customer_id, 128) and _text_ok(event_type, 100)):
        return None
    timestamp = _timestamp_of(raw["timestamp"])
    if timestamp is None:
        return None
    properties = raw["properties"] if "properties" in raw else {}
    if type(properties) is not dict:
        return None
    for name in properties:
        if type(name) is not str:
            return None
    # tuple.__new__ directly: the NamedTuple constructor is a Python-level function, one call per event.
    return _new_tuple(ValidEvent, (transaction_id, customer_id, event_type, timestamp[0], timestamp[1], properties))


_new_tuple: Final = tuple.__new__


def validated_event(raw: object) -> ValidEvent:
    """The event, validated with UsageEvent's rules; raises pydantic.ValidationError like UsageEvent."""
    if isinstance(raw, UsageEvent):
        return ValidEvent.of(raw)
    return fast_event(raw) or ValidEvent.of(UsageEvent.model_validate(raw))


@dataclass(frozen=True)
class EventProblem:
    field: str
    reason: str
    code: str


# Every character an ASCII string can hold and still be read by Decimal (digits, sign, point, exponent,
# underscores, whitespace, and the letters of Infinity / NaN / sNaN): a string with any other ASCII
# character is certainly not a number, and skipping Decimal spares a raised exception per event.
_MAYBE_DECIMAL: Final = re.compile(r"[\s0-9+\-._eEiInNfFtTyYaAsS]*")
# How a decimal string can start (after whitespace, which Decimal and str.strip skip): a digit, a sign,
# a point, an underscore (Decimal reads "_1" as 1), or the first letter of Infinity / NaN / sNaN. Any
# other ASCII first character rules a number out at once.
_DECIMAL_STARTS: Final = frozenset("0123456789+-._iInNsS")


def _may_be_decimal(text: str) -> bool:
    if not text:
        return False
    first = text[0]
    if first.isascii() and first not in _DECIMAL_STARTS and not first.isspace():
        return False
    return not text.isascii() or _MAYBE_DECIMAL.fullmatch(text) is not None


def numeric_value(value: object) -> Decimal | None:
    """The number a property holds (JSON number or decimal string), or None when it is not numeric."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(value) if math.isfinite(value) else Decimal("NaN")
    if isinstance(value, str):
        if not _may_be_decimal(value):
            return None
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


@dataclass(frozen=True)
class EventWindow:
    """The accepted timestamps at one instant: [now - MAX_EVENT_AGE, now + MAX_EVENT_LEAD]."""

    oldest: datetime
    latest: datetime

    @classmethod
    def at(cls, now: datetime) -> EventWindow:
        return cls(now - MAX_EVENT_AGE, now + MAX_EVENT_LEAD)


def check_event(event: UsageEvent | ValidEvent, now: datetime | EventWindow) -> EventProblem | None:
    """The first problem with an event that needs no lookup (time window, property values), or None.
    Pass an EventWindow to check many events at one instant."""
    window = now if isinstance(now, EventWindow) else EventWindow.at(now)
    if event.timestamp < window.oldest:
        return EventProblem("timestamp", f"older than {MAX_EVENT_AGE.days} days", "timestamp_too_old")
    if event.timestamp > window.latest:
        return EventProblem("timestamp", "more than 5 minutes in the future", "timestamp_in_future")
    for name, value in event.properties.items():
        if "\x00" in name:
            return EventProblem(f"properties.{name}", "must not contain U+0000", "invalid_property")
        kind = type(value)
        if kind is int:  # the common cases first, without a Decimal
            if value < 0:
                return EventProblem(f"properties.{name}", "must not be negative", "invalid_property")
            continue
        if kind is float:
            if not math.isfinite(value):
                return EventProblem(f"properties.{name}", "must be a finite number", "invalid_property")
            if value < 0:
                return EventProblem(f"properties.{name}", "must not be negative", "invalid_property")
            continue
        if kind is str and "\x00" not in value and not _may_be_decimal(value):
            continue  # text such as a model name
        if _holds_nul(value):
            return EventProblem(f"properties.{name}", "must not contain U+0000", "invalid_property")
        number = numeric_value(value)
        if number is None:
            continue
        if not number.is_finite():
            return EventProblem(f"properties.{name}", "must be a finite number", "invalid_property")
        if number < 0:
            return EventProblem(f"properties.{name}", "must not be negative", "invalid_property")
    return None


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in str(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False
