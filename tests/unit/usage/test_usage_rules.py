"""The shared usage rules (shared.contracts.usage_rules): quantity bounds, timestamps with no UTC equivalent,
property shape, card numbers (and the identifiers that must not be taken for one)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from shared.contracts.card_numbers import contains_pan, is_card_number
from shared.contracts.usage_rules import EventWindow, number_of, properties_problem, quantity_problem
from shared.sdk.events import UsageEvent, check_event, fast_event, validated_event

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
BASE = {"transaction_id": "tx-1", "customer_id": "cust_1", "event_type": "inference",
        "timestamp": "2026-03-10T11:00:00Z", "properties": {"cost_usd_micros": 12}}


def _code(properties: dict[str, object]) -> str | None:
    problem = properties_problem(properties)
    return None if problem is None else problem.code


@pytest.mark.parametrize(("value", "code"), [
    (1e300, "quantity_out_of_range"), ("1e309", "quantity_out_of_range"), (10**30, "quantity_out_of_range"),
    (10**19, "quantity_out_of_range"), ("10000000000000000000", "quantity_out_of_range"),
    (-1, "invalid_property"), (-0.5, "invalid_property"), ("-3", "invalid_property"),
    (float("nan"), "invalid_property"), (float("inf"), "invalid_property"), ("Infinity", "invalid_property"),
    ("NaN", "invalid_property"), (0.30000000000000004, "quantity_too_precise"),
    ("0.0000000001", "quantity_too_precise"), (1e-10, "quantity_too_precise"),
])
def test_numbers_outside_the_quantity_bounds_are_refused_with_their_code(value, code):
    assert _code({"cost_usd_micros": value}) == code


@pytest.mark.parametrize("value", [
    0, 10**19 - 1, 2**63 - 1, "9999999999.999999999", "1.500000000000000", 0.5, 1e18, "1E+5", "0.000000001",
    1733400000000, "1733400000000000", "-0", True, None, "llama-3-8b",
])
def test_numbers_inside_the_bounds_and_non_numbers_pass(value):
    assert _code({"n": value}) is None


def test_quantity_problem_counts_decimal_places_of_the_value_not_of_its_trailing_zeros():
    assert quantity_problem(Decimal("1.1000000000000"), "q") is None
    assert quantity_problem(Decimal("0E-20"), "q") is None
    assert quantity_problem(Decimal("1.0000000001"), "q") is not None


def test_a_float_is_read_as_the_value_its_producer_wrote():
    assert number_of(0.1) == Decimal("0.1")
    assert number_of(True) is None and number_of("gpt-4o") is None


def test_a_timestamp_with_no_utc_equivalent_is_refused_by_the_model_not_raised():
    for text in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):
        raw = {**BASE, "timestamp": text}
        assert fast_event(raw) is None
        with pytest.raises(ValidationError, match="no UTC equivalent"):
            validated_event(raw)
    west_of_the_last_instant = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1)))
    with pytest.raises(ValidationError):
        validated_event({**BASE, "timestamp": west_of_the_last_instant})


def test_the_window_of_an_instant_near_the_ends_of_time_does_not_overflow():
    window = EventWindow.at(datetime(1, 1, 2, tzinfo=UTC))
    assert window.problem(datetime(1, 1, 1, tzinfo=UTC)) is None
    assert EventWindow.at(datetime.max.replace(tzinfo=UTC)).problem(NOW) is not None


def _deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def test_properties_nested_too_deep_or_too_large_are_refused_without_recursion():
    assert _code({"d": _deep(8)}) is None
    assert _code({"d": _deep(9)}) == "properties_too_deep"
    assert _code({"d": _deep(990)}) == "properties_too_deep"
    assert _code({"d": list(range(1000))}) == "properties_too_large"
    assert _code({f"p{n}": n for n in range(1001)}) == "properties_too_large"


def test_values_json_cannot_carry_are_refused():
    assert _code({"d": Decimal(1)}) == "invalid_property"
    assert _code({"d": {"n": 2**64}}) == "invalid_property"
    assert _code({"d": {"x": "a\x00b"}}) == "invalid_property"


@pytest.mark.parametrize("text", [
    "4242 4242 4242 4242", "4242-4242-4242-4242", "4242424242424242", " 4242424242424242 ", "378282246310005",
    "3782 822463 10005", "5555555555554444", "4000 0566 5566 5556", "6011111111111117",
])
def test_card_numbers_written_as_such_are_refused_and_not_echoed(text):
    assert is_card_number(text)
    problem = check_event(UsageEvent.model_validate({**BASE, "properties": {"card": text}}), NOW)
    assert problem is not None and problem.code == "card_number" and problem.field == "properties.card"
    assert text.strip() not in problem.reason
    nested = properties_problem({"payment": {"source": [text]}})
    assert nested is not None and nested.code == "card_number"


def test_identifiers_that_merely_hold_a_luhn_valid_run_are_not_card_numbers():
    luhn_ms_timestamps = [str(t) for t in range(1733400000000, 1733400000100) if contains_pan(str(t).encode())]
    snowflakes = [str(s) for s in range(1234567890123456700, 1234567890123456800) if contains_pan(str(s).encode())]
    assert luhn_ms_timestamps and snowflakes  # the guard over whole bodies would refuse them
    assert not any(is_card_number(t) for t in luhn_ms_timestamps + snowflakes)
    assert not any(is_card_number(f"sub_{uuid.uuid4().hex}") for _ in range(2000))
    assert not is_card_number("4242 4242 4242 4241")  # fails Luhn
    assert not is_card_number("order 4242 4242 4242 4242")  # not only a card number: the body guard's job
    assert not is_card_number("42 4242 4242 4242 42")  # not a card layout
