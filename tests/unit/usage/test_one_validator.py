"""One validator for edge, SDK and worker: any event the edge/SDK rules accept, the worker decodes (from the
message a direct producer writes) to an item with the same quantity; anything they refuse, the worker
refuses with the same code. Both worker paths (the one-pass check and the models) agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import hypothesis.strategies as st
import orjson
import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from services.billing_worker.adapters.usage import (
    NO_KEY,
    MeterMap,
    MeterRule,
    UsageMaterializer,
    UsageRefused,
    _decode_general,
    _fast_line,
    _Rules,
)
from shared.adapters.clock import ManualClock
from shared.contracts.envelope import EnvelopeError
from shared.contracts.usage_rules import EventWindow, number_of
from shared.sdk.envelopes import usage_value
from shared.sdk.events import check_event, validated_event

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
RECEIVED = "2026-03-10T12:00:00Z"
SUB = "sub_1"
METERS = MeterMap({"inference": MeterRule("inference", "cost_usd_micros"),
                   "storage_usage": MeterRule("storage", "gb_months"), "api_call": MeterRule("calls", None)})
VALUE_PROPERTY = {"inference": "cost_usd_micros", "storage_usage": "gb_months", "api_call": None}

_offsets = st.sampled_from(["Z", "Z", "+00:00", "-01:00", "+01:00", "+05:30", "-23:59", "+23:59"])
_instants = st.integers(0, 4).flatmap(lambda n: st.sampled_from([
    "9999-12-31T23:59:59", "0001-01-01T00:00:00", "9999-01-01T00:00:00", "2026-03-10T12:05:00",
    "2026-02-04T12:00:00"]) if n == 0 else st.datetimes(
        min_value=(NOW - timedelta(days=36)).replace(tzinfo=None),
        max_value=(NOW + timedelta(minutes=10)).replace(tzinfo=None)).map(lambda d: d.isoformat()))
_timestamps = st.tuples(_instants, _offsets).map(lambda t: t[0] + t[1])
_texts = st.one_of(st.text(max_size=20), st.sampled_from(["4242 4242 4242 4242", "4242424242424242", "a\x00b",
                                                          "1733400000000", "llama-3-8b"]))
_numbers = st.one_of(
    st.integers(min_value=-2**63, max_value=2**64 - 1), st.integers(min_value=0, max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(min_value=0, max_value=1e6),
    st.decimals(allow_nan=True, allow_infinity=True).map(str), st.sampled_from(["1e309", "-0", "0.30000000000000004"]),
    st.integers(min_value=0, max_value=10**12).map(lambda n: str(Decimal(n).scaleb(-9))))
_scalars = st.one_of(_numbers, _texts, st.booleans(), st.none())
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                       max_leaves=12)
_events = st.fixed_dictionaries({
    # mostly valid identifiers (the rules below them are what this test is about), sometimes not
    "transaction_id": st.integers(0, 9).flatmap(
        lambda n: st.text(max_size=130) if n == 0 else st.from_regex(r"tx-[a-z0-9]{1,12}", fullmatch=True)),
    "customer_id": st.integers(0, 19).map(lambda n: "c" * 129 if n == 0 else f"cust_{n}"),
    "event_type": st.sampled_from(sorted(VALUE_PROPERTY)),
    "timestamp": _timestamps,
    "properties": st.dictionaries(st.sampled_from(["cost_usd_micros", "gb_months", "model", "card", "deep"]),
                                  _values, max_size=4),
})


def _edge_verdict(raw: dict[str, Any]) -> str | None:
    """None when the edge would accept the event (the SDK applies the same checks), else the code."""
    try:
        event = validated_event(raw)
    except ValidationError:
        return "invalid_event"
    problem = check_event(event, EventWindow.at(NOW))
    if problem is not None:
        return problem.code
    prop = VALUE_PROPERTY[event.event_type]  # the plan check of the edge (routes/ingest.py _plan_problem)
    if prop is not None and number_of(event.properties.get(prop)) is None:
        return "missing_property"
    return None


def _message(raw: dict[str, Any]) -> bytes:
    """What a direct producer (kcat) writes for the event, without any check."""
    return orjson.dumps({"event_id": "6f1c6a3e-3b0e-4f57-9d4c-9a61a2f1b0d7", "type": "usage.recorded",
                         "schema_version": 1, "occurred_at": RECEIVED, "producer": "kcat", "correlation_id": None,
                         "payload": {**raw, "subscription_id": SUB, "received_at": RECEIVED}})


def _worker_verdict(value: bytes) -> tuple[str | None, str | None]:
    """(refusal code or None, the quantity written on the COPY line) as the worker prepares the message."""
    prepared = UsageMaterializer(METERS, ManualClock(NOW)).prepare([value], [SUB.encode()])
    if prepared.refused:
        error = prepared.refused[0][1]
        return (error.problem.code if isinstance(error, UsageRefused) else "invalid_event"), None
    return None, prepared.lines[0].split("\t")[5]


@settings(max_examples=250, deadline=None)
@given(raw=_events)
def test_the_worker_stores_exactly_what_the_edge_accepts_and_refuses_the_rest_with_the_same_code(raw):
    try:
        value = _message(raw)
    except TypeError:  # not encodable as JSON (a lone surrogate): it cannot reach Kafka as a usage message
        return
    edge = _edge_verdict(raw)
    worker, quantity = _worker_verdict(value)

    assert worker == edge or (edge == "invalid_event" and worker is not None)
    if edge is None:
        prop = VALUE_PROPERTY[raw["event_type"]]
        expected = Decimal(1) if prop is None else number_of(raw["properties"][prop])
        assert quantity is not None and Decimal(quantity) == expected


@settings(max_examples=100, deadline=None)
@given(raw=_events)
def test_an_event_the_edge_accepts_and_writes_is_stored_by_the_worker_with_its_quantity(raw):
    if _edge_verdict(raw) is not None:
        return
    value = usage_value(validated_event(raw), customer_id=raw["customer_id"], subscription_id=SUB,
                        received_at_utc=RECEIVED, producer="ingest")
    assert _worker_verdict(value)[0] is None


@settings(max_examples=150, deadline=None)
@given(raw=_events)
def test_the_one_pass_check_and_the_models_give_the_same_verdict(raw):
    try:
        value = _message(raw)
    except TypeError:
        return
    rules = _Rules(ManualClock(NOW))
    meters = {t: (r.meter_id, r) for t, r in METERS.rules().items()}

    def verdict(decode):  # type: ignore[no-untyped-def]
        try:
            result = decode()
        except UsageRefused as error:
            return error.problem.code
        except EnvelopeError:
            return "invalid"
        return "accepted" if result is not None else None

    fast = verdict(lambda: _fast_line(value, meters, SUB.encode(), rules))
    slow = verdict(lambda: _decode_general(value, METERS, SUB.encode(), rules))
    assert fast is None or fast == slow


def test_a_message_keyed_by_another_subscription_is_refused_and_decode_without_a_key_does_not_check_it():
    value = _message({"transaction_id": "t", "customer_id": "c", "event_type": "api_call",
                      "timestamp": "2026-03-10T11:00:00Z", "properties": {}})
    prepared = UsageMaterializer(METERS).prepare([value, value, value], [b"sub_2", None, SUB.encode()])
    assert [(i, e.problem.code) for i, e in prepared.refused] == [(0, "key_mismatch"), (1, "key_mismatch")]
    assert UsageMaterializer(METERS).decode(value, NO_KEY).subscription_id == SUB
