"""The usage event as producers send it (Metronome's ingest shape) and the checks that need no lookup.

Shared by the HTTP edge, the producer SDK (`shared.sdk.client`) and anyone writing straight to Kafka, so
that an event refused by one path is refused by all. Checks that need the customer (is it known, does
its plan meter this event type) are the edge's and the worker's.

Shape: `{"transaction_id", "customer_id", "event_type", "timestamp" (RFC 3339 with offset),
"properties": {...}}`. Numeric properties (JSON numbers, or strings holding a decimal number, which is
how fractional quantities such as `gb_months` should be sent to stay exact) must be finite and >= 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

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


@dataclass(frozen=True)
class EventProblem:
    field: str
    reason: str
    code: str


def numeric_value(value: object) -> Decimal | None:
    """The number a property holds (JSON number or decimal string), or None when it is not numeric."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(value) if math.isfinite(value) else Decimal("NaN")
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def check_event(event: UsageEvent, now: datetime) -> EventProblem | None:
    """The first problem with an event that needs no lookup (time window, property values), or None."""
    if event.timestamp < now - MAX_EVENT_AGE:
        return EventProblem("timestamp", f"older than {MAX_EVENT_AGE.days} days", "timestamp_too_old")
    if event.timestamp > now + MAX_EVENT_LEAD:
        return EventProblem("timestamp", "more than 5 minutes in the future", "timestamp_in_future")
    for name, value in event.properties.items():
        if "\x00" in name:
            return EventProblem(f"properties.{name}", "must not contain U+0000", "invalid_property")
        if type(value) is int:  # the common case, without a Decimal
            if value < 0:
                return EventProblem(f"properties.{name}", "must not be negative", "invalid_property")
            continue
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
