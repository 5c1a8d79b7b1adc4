"""The fast event check agrees with UsageEvent: it never accepts what UsageEvent refuses, and what it
accepts it reads exactly as UsageEvent does. Likewise the numeric-string pre-filter and Decimal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

import hypothesis.strategies as st
import pytest
from hypothesis import given
from pydantic import ValidationError

from shared.sdk.envelopes import usage_event_id, usage_event_id_text, usage_message
from shared.sdk.events import UsageEvent, ValidEvent, fast_event, numeric_value, validated_event

pytestmark = pytest.mark.unit

BASE = {"transaction_id": "tx-1", "customer_id": "cust_1", "event_type": "inference",
        "timestamp": "2026-03-10T10:00:00Z", "properties": {"cost_usd_micros": 12}}

TIMESTAMPS = [
    "2026-03-10T10:00:00Z", "2026-03-10T10:00:00+00:00", "2026-03-10T10:00:00-00:00", "2026-03-10T10:00:00.5Z",
    "2026-03-10T10:00:00.123456+05:30", "2026-03-10T10:00:00.1234567Z", "2026-03-10T10:00:00+23:59",
    "2026-03-10T10:00:00+24:00", "2026-03-10T10:00:00+01:60", "2026-03-10T24:00:00Z", "2026-03-10T23:59:60Z",
    "2026-02-30T10:00:00Z", "0000-01-01T00:00:00Z", "2026-03-10T10:00:00", "2026-03-10 10:00:00Z",
    "2026-03-10t10:00:00z", "2026-03-10T10:00Z", "2026-03-10T10:00:00+0100", "2026-03-10", "1741600800",
    "２０２６-03-10T10:00:00Z", "2026-03-10T10:00:00.Z", "", "2026-03-10T10:00:00\x00Z",
    1741600800, 1741600800.5, None, True, datetime(2026, 3, 10, 10, tzinfo=UTC),
    datetime(2026, 3, 10, 10, tzinfo=timezone(timedelta(hours=-7))), datetime(2026, 3, 10, 10),
]

VARIANTS = [
    {}, {"properties": {}}, {"transaction_id": ""}, {"transaction_id": "x" * 128}, {"transaction_id": "x" * 129},
    {"event_type": "e" * 100}, {"event_type": "e" * 101}, {"customer_id": "a\x00b"}, {"customer_id": 42},
    {"transaction_id": b"bytes"}, {"properties": None}, {"properties": []}, {"properties": {"n": "1"}},
    {"properties": {1: "int key"}}, {"extra": 1}, {"transaction_id": "é" * 128}, {"customer_id": " "},
]


def _pydantic(raw: object) -> ValidEvent | None:
    try:
        return ValidEvent.of(UsageEvent.model_validate(raw))
    except ValidationError:
        return None


@pytest.mark.parametrize("raw", [{**BASE, "timestamp": t} for t in TIMESTAMPS] + [{**BASE, **v} for v in VARIANTS]
                         + [{k: v for k, v in BASE.items() if k != "properties"},
                            {k: v for k, v in BASE.items() if k != "timestamp"}, [], "event", None])
def test_the_fast_check_accepts_only_what_usage_event_accepts_and_reads_it_identically(raw):
    fast, slow = fast_event(raw), _pydantic(raw)

    if fast is not None:
        assert slow == fast
    if slow is None:
        with pytest.raises(ValidationError):
            validated_event(raw)
    else:
        assert validated_event(raw) == slow


def test_the_common_shape_takes_the_fast_path():
    assert fast_event(BASE) == ValidEvent("tx-1", "cust_1", "inference", datetime(2026, 3, 10, 10, tzinfo=UTC),
                                          "2026-03-10T10:00:00Z", {"cost_usd_micros": 12})
    assert fast_event({**BASE, "timestamp": "2026-03-10T11:30:00.25+01:30"}).timestamp_utc == \
        "2026-03-10T10:00:00.250000Z"  # type: ignore[union-attr]


@pytest.mark.parametrize("text", [
    "1", " 2.5 ", "-0", "+1e3", "1_000", "1__0", "_1", "1_", ".5", "5.", "Infinity", "-inf", "nan", "sNaN",
    "NaN12", "1e", "e5", "llama-3-8b", "gpt-4o", "0x10", "1,5", "١٢٣", "１２", "", "   ", "in", "nana", "3 4",
])
def test_the_numeric_prefilter_agrees_with_decimal(text):
    try:
        expected: Decimal | None = Decimal(text.strip())
    except InvalidOperation:
        expected = None

    got = numeric_value(text)

    assert (got is None) == (expected is None)
    if expected is not None and not expected.is_nan():
        assert got == expected


def test_the_event_id_is_the_uuid5_of_customer_and_transaction():
    for customer, transaction in [("cust_1", "tx-9"), ("ü", "€"), ("a" * 128, "b" * 128)]:
        assert usage_event_id_text(customer, transaction) == str(usage_event_id(customer, transaction))


@given(customer=st.text(), transaction=st.text())
def test_the_event_id_text_is_the_uuid5_for_any_customer_and_transaction(customer: str, transaction: str) -> None:
    # The text is assembled from a SHA-1 hexdigest with the version and variant characters set by hand.
    assert usage_event_id_text(customer, transaction) == str(usage_event_id(customer, transaction))


def test_a_message_built_from_the_model_or_the_fast_event_is_the_same_bytes():
    at = datetime(2026, 3, 10, 10, 0, 1, tzinfo=UTC)
    from_model = usage_message(UsageEvent.model_validate(BASE), customer_id="cust_1", subscription_id="sub_1",
                               received_at=at, producer="p")
    from_fast = usage_message(validated_event(BASE), customer_id="cust_1", subscription_id="sub_1",
                              received_at=at, producer="p")

    assert from_model == from_fast
    assert b'"timestamp":"2026-03-10T10:00:00Z"' in from_fast.value
    assert b'"received_at":"2026-03-10T10:00:01Z"' in from_fast.value


def test_the_numeric_prefilter_agrees_with_decimal_for_every_ascii_character_in_front():
    disagreements = []
    for first in map(chr, range(128)):
        for rest in ("", "1", "nf", "an", "NaN", "_1", "e3", ".5", " 7", "x"):
            text = first + rest
            try:
                expected: Decimal | None = Decimal(text.strip())
            except InvalidOperation:
                expected = None
            if (numeric_value(text) is None) != (expected is None):
                disagreements.append(text)

    assert disagreements == []
