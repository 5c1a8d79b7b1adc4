"""Pure rules of the edge: card-number detection and the event checks shared with the SDK."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.ingest.pan import contains_pan, luhn_valid, pan_fields
from shared.sdk.events import UsageEvent, check_event

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 10, tzinfo=UTC)


@pytest.mark.parametrize("text", [b"4242424242424242", b"4242 4242 4242 4242", b"4000-0566-5566-5556",
                                  b"378282246310005", b"6011111111111117"])
def test_known_test_card_numbers_are_detected(text):
    assert contains_pan(text)


@pytest.mark.parametrize("text", [b"4242424242424241", b"123456789012", b"42424242424242424242424",
                                  b"order-2026-03-10"])
def test_numbers_that_are_not_card_shaped_pass(text):
    assert not contains_pan(text)


@pytest.mark.parametrize("text", [b"pan_4242424242424242", b"card: 4242 4242 4242 4242", b"x=4242424242424242;",
                                  b'"4000-0566-5566-5556"'])
def test_a_card_number_next_to_punctuation_is_still_detected(text):
    assert contains_pan(text)


def test_our_own_hex_ids_are_never_taken_for_card_numbers():
    # These hold a Luhn-valid 16-digit run between hex letters (as about one id in 450 does by chance).
    assert luhn_valid("4242424242424242")
    assert not contains_pan(b"sub_a4242424242424242b0123456789abcd")
    assert not contains_pan(b"cust_f4242424242424242e0123")
    ids = [f"sub_{uuid.uuid4().hex}".encode() for _ in range(20_000)]
    assert [i for i in ids if contains_pan(i)] == []  # about 45 of them were refused before


def test_the_field_holding_a_card_number_is_named():
    assert pan_fields(b'{"a": {"b": ["x", "4242424242424242"]}, "c": 1}') == ["a.b.1"]


def test_luhn_accepts_a_valid_check_digit_and_refuses_a_wrong_one():
    assert luhn_valid("79927398713") and not luhn_valid("79927398714")


def _event(**overrides):  # type: ignore[no-untyped-def]
    return UsageEvent.model_validate({"transaction_id": "t", "customer_id": "c", "event_type": "inference",
                                      "timestamp": NOW.isoformat(), "properties": {}, **overrides})


@pytest.mark.parametrize(("overrides", "code"), [
    ({"timestamp": (NOW - timedelta(days=34, seconds=1)).isoformat()}, "timestamp_too_old"),
    ({"timestamp": (NOW + timedelta(minutes=5, seconds=1)).isoformat()}, "timestamp_in_future"),
    ({"properties": {"n": -1}}, "invalid_property"),
    ({"properties": {"n": "Infinity"}}, "invalid_property"),
    ({"properties": {"n": float("nan")}}, "invalid_property"),
])
def test_events_outside_the_window_or_with_bad_numbers_are_refused(overrides, code):
    problem = check_event(_event(**overrides), NOW)
    assert problem is not None and problem.code == code


def test_events_at_the_edges_of_the_window_with_text_properties_pass():
    assert check_event(_event(timestamp=(NOW - timedelta(days=34)).isoformat(),
                              properties={"model": "llama", "n": "0.5"}), NOW) is None
    assert check_event(_event(timestamp=(NOW + timedelta(minutes=5)).isoformat()), NOW) is None
