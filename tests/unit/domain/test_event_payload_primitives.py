"""`event_payload` writes an event's fields as JSON-ready primitives; plain fields (ids, versions, counts, flags,
None) are passed through before the other checks and instants go through the memoised `iso_instant`: the payload
must be what the full conversion gives."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum, IntEnum
from zoneinfo import ZoneInfo

import pytest

from shared.domain.calendar import Period
from shared.domain.events import _primitive
from shared.domain.money import Money
from shared.domain.subscription import SubscriptionStatus

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


class _Level(IntEnum):
    HIGH = 3


def _reference(value: object) -> object:
    """The conversion as it was written before the fast path (the contract)."""
    if isinstance(value, Money):
        return {"amount_minor": value.amount_minor, "currency": value.currency}
    if isinstance(value, Period):
        return {"start": value.start.isoformat(), "end": value.end.isoformat()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(_reference(item) for item in value)  # type: ignore[type-var]
    if isinstance(value, list | tuple):
        return [_reference(item) for item in value]
    return value


@pytest.mark.parametrize("value", [
    "sub_1", 7, 0, True, False, None, SubscriptionStatus.ACTIVE, _Level.HIGH, Money(1234, "USD"), Decimal("2.50"),
    JAN_1, datetime(2026, 1, 1, 1, tzinfo=ZoneInfo("Europe/Paris")), Period(JAN_1, FEB_1),
    frozenset({"b", "a"}), ("x", SubscriptionStatus.PAST_DUE, 3), [Money(1, "EUR")],
])
def test_a_field_is_converted_as_before(value: object) -> None:
    converted = _primitive(value)
    assert converted == _reference(value)
    assert type(converted) is type(_reference(value))  # an enum becomes its plain value, not the member
