"""The usage event as producers send it (Metronome's ingest shape) and the checks that need no lookup.

Shared by the HTTP edge, the producer SDK (`shared.sdk.client`) and anyone writing straight to Kafka, so
that an event refused by one path is refused by all. Checks that need the customer (is it known, does
its plan meter this event type) are the edge's and the worker's.

Shape: `{"transaction_id", "customer_id", "event_type", "timestamp" (RFC 3339 with offset),
"properties": {...}}`. The bounds (identifiers, time window, numeric properties, property shape, card
numbers) are `shared.contracts.usage_rules`, which the worker applies too: numeric properties (JSON numbers,
or strings holding a decimal number, which is how fractional quantities such as `gb_months` should be sent
to stay exact) must be finite, >= 0, < 10^19, with at most 9 decimal places.

Hot path: `validated_event` checks the common exact shape (plain dict, str fields, RFC 3339 string or
aware datetime) without building a pydantic model, and hands anything else to `UsageEvent` itself, so
the accepted set and the error messages stay exactly UsageEvent's (`tests/unit/edge/test_fast_events.py`
compares both on tricky inputs). Checked events are `ValidEvent` tuples carrying the UTC timestamp text
written on the wire.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from shared.contracts.usage_rules import (
    MAX_EVENT_AGE,
    MAX_EVENT_LEAD,
    MAX_EVENT_TYPE_LENGTH,
    MAX_ID_LENGTH,
    EventWindow,
    UsageProblem,
    as_utc,
    properties_problem,
)
from shared.contracts.usage_rules import number_of as numeric_value

MAX_BATCH_EVENTS = 1000
# PostgreSQL text and JSONB cannot hold U+0000; an identifier carrying one could never be stored.
NO_NUL = r"^[^\x00]*$"
# The problem `check_event` reports (the rules module's type, under the name the edge has always used).
EventProblem = UsageProblem
__all__ = ["MAX_BATCH_EVENTS", "MAX_EVENT_AGE", "MAX_EVENT_LEAD", "EventProblem", "EventWindow", "UsageEvent",
           "ValidEvent", "check_event", "fast_event", "numeric_value", "utc_text", "validated_event"]


class UsageEvent(BaseModel):
    """One usage event in Metronome's ingest shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_NUL,
                                description="the producer's unique id (dedupe key)")
    customer_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_NUL,
                             description="our customer id or an ingest alias")
    event_type: str = Field(min_length=1, max_length=MAX_EVENT_TYPE_LENGTH, pattern=NO_NUL)
    timestamp: AwareDatetime = Field(description="RFC 3339 with a UTC offset")
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _has_utc_equivalent(cls, value: datetime) -> datetime:
        if as_utc(value) is None:
            raise ValueError("has no UTC equivalent (outside years 1 to 9999 once its offset is applied)")
        return value


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
    """RFC 3339 in UTC with `Z`, as every timestamp on the wire is written (OverflowError when `at` has no
    UTC equivalent: UsageEvent refuses such timestamps)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _utc_text_or_none(at: datetime) -> str | None:
    utc = as_utc(at)
    return None if utc is None else utc.isoformat().replace("+00:00", "Z")


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
    utc = _utc_text_or_none(at)  # None: no UTC equivalent, UsageEvent says so
    return None if utc is None else (at, utc)


@functools.lru_cache(maxsize=8192)
def _timestamp_of_datetime(at: datetime) -> tuple[datetime, str] | None:
    utc = _utc_text_or_none(at)
    return None if utc is None else (at, utc)


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
    if not (_text_ok(transaction_id, MAX_ID_LENGTH) and _text_ok(customer_id, MAX_ID_LENGTH)
            and _text_ok(event_type, MAX_EVENT_TYPE_LENGTH)):
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


def check_event(event: UsageEvent | ValidEvent, now: datetime | EventWindow) -> EventProblem | None:
    """The first problem with an event that needs no lookup (time window, property values and shape, card
    numbers: `shared.contracts.usage_rules`), or None. Pass an EventWindow to check many events at one
    instant."""
    window = now if isinstance(now, EventWindow) else EventWindow.at(now)
    if not window.oldest <= event.timestamp <= window.latest:
        return window.problem(event.timestamp)
    return properties_problem(event.properties)
