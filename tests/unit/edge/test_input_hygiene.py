"""Inputs PostgreSQL cannot store (U+0000), cursors, and the usage-so-far preview's arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from services.ingest.nul import nul_fields
from services.ingest.pagination import decode_cursor, decode_int_cursor, encode_cursor
from services.ingest.problems import ProblemError
from services.ingest.usage_estimate import MeterTreatment, estimate_meter, estimate_usage
from shared.adapters.catalog_file import load_default_catalog
from shared.sdk.events import UsageEvent, check_event

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 10, tzinfo=UTC)


def test_nul_characters_are_found_in_keys_and_values_and_named_by_path():
    assert nul_fields(b'{"name": "a\\u0000b", "ok": "x", "m": [{"\\u0000k": 1}]}') == ["name", "m.0.\x00k"]


def test_an_escaped_backslash_before_u0000_is_not_a_nul():
    assert nul_fields(b'{"path": "C:\\\\u0000"}') == []


def test_bodies_without_nul_are_not_parsed_at_all():
    assert nul_fields(b"not json at all") == []


def test_integer_cursors_round_trip_and_anything_else_is_a_422():
    assert decode_int_cursor(encode_cursor("42")) == 42
    for bad in (encode_cursor("abc"), encode_cursor("4\x002"), encode_cursor("\u0663"), "%%%"):
        with pytest.raises(ProblemError):
            decode_int_cursor(bad)
    with pytest.raises(ProblemError):
        decode_cursor(encode_cursor("cust\x00"))


def test_usage_events_with_nul_in_an_identifier_or_a_property_are_refused():
    with pytest.raises(ValidationError):
        UsageEvent(transaction_id="t\x00", customer_id="c", event_type="inference", timestamp=NOW)
    event = UsageEvent(transaction_id="t", customer_id="c", event_type="inference", timestamp=NOW,
                       properties={"model": {"name": "x\x00"}})
    problem = check_event(event, NOW)
    assert problem is not None and (problem.code, problem.field) == ("invalid_property", "properties.model")


def test_money_credits_cover_the_rounded_gross_and_the_rest_is_charged():
    pro = load_default_catalog().plan("pro")
    estimate = estimate_meter(pro, "inference", Decimal(3_504_999), credit_minor=230, credit_units=Decimal(0))
    assert (estimate.gross.amount_minor if estimate.gross else None, estimate.credit_applied.amount_minor
            if estimate.credit_applied else None, estimate.charge.amount_minor) == (350, 230, 120)


def test_unit_credits_reduce_the_billable_quantity_before_pricing():
    pro = load_default_catalog().plan("pro")
    estimate = estimate_meter(pro, "storage", Decimal("1000.5"), credit_minor=0, credit_units=Decimal(1000))
    assert (estimate.billable_quantity, estimate.charge.amount_minor) == (Decimal("0.5"), 1)


def test_blocked_and_unpriced_meters_are_never_charged():
    catalog = load_default_catalog()
    estimates = estimate_usage(catalog.plan("free"), {"inference": Decimal(10**9), "reports": Decimal(3)}, {}, {})
    assert [(e.meter_id, e.treatment, e.charge.amount_minor) for e in estimates] == [
        ("inference", MeterTreatment.BLOCK, 0), ("reports", MeterTreatment.UNPRICED, 0),
        ("storage", MeterTreatment.BLOCK, 0)]
