"""The worker's usage decoding is total: any bytes become a COPY line or a refusal with a reason, never an
exception that would stop the worker (issue 12: defects 1 and 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy

from services.billing_worker.adapters.usage import MeterMap, MeterRule, UsageMaterializer
from shared.adapters.clock import ManualClock
from shared.contracts.envelope import Envelope, EnvelopeError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
SUB = "sub_1"
METERS = MeterMap({"inference": MeterRule("inference", "cost_usd_micros")})


def message(*, occurred_at: str = "2026-03-10T11:00:00Z", **payload: Any) -> bytes:
    body = {"transaction_id": "tx-1", "customer_id": "cust_1", "subscription_id": SUB, "event_type": "inference",
            "timestamp": "2026-03-10T11:00:00Z", "properties": {"cost_usd_micros": 5},
            "received_at": "2026-03-10T11:00:01Z", **payload}
    return orjson.dumps({"event_id": "6f1c6a3e-3b0e-4f57-9d4c-9a61a2f1b0d7", "type": "usage.recorded",
                         "schema_version": 1, "occurred_at": occurred_at, "producer": "kcat", "correlation_id": None,
                         "payload": body})


def refusals(values: list[bytes | None], keys: list[bytes | None] | None = None) -> list[str]:
    prepared = UsageMaterializer(METERS).prepare(values, keys) if keys is not None else \
        UsageMaterializer(METERS).prepare(values)
    assert len(prepared.lines) + len(prepared.refused) == len(values)
    return [str(error) for _, error in prepared.refused]


@pytest.mark.parametrize(("value", "reason"), [
    (message(occurred_at="9999-12-31T23:59:59-01:00"), "occurred_at"),
    (message(timestamp="0001-01-01T00:00:00+01:00"), "no UTC equivalent"),
    (message(received_at="9999-12-31T23:59:59-01:00"), "no UTC equivalent"),
    (message(timestamp="9999-12-31T23:59:59-01:00", received_at="9999-12-31T23:59:59-01:00"), "no UTC equivalent"),
    (b'{"payload": ' + b"[" * 5000 + b"]" * 5000 + b"}", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (None, "empty"),
])
def test_values_no_model_can_read_are_refused_with_a_reason_never_raised(value, reason):
    [refusal] = refusals([message(), value])  # the good message of the batch is kept
    assert reason in refusal


@pytest.mark.parametrize(("payload", "code"), [
    ({"properties": {"cost_usd_micros": -5}}, "invalid_property"),
    ({"properties": {"cost_usd_micros": "-0.5"}}, "invalid_property"),
    ({"properties": {"cost_usd_micros": 5, "discount": -3}}, "invalid_property"),
    ({"properties": {"cost_usd_micros": 1e300}}, "quantity_out_of_range"),
    ({"properties": {"cost_usd_micros": "1e309"}}, "quantity_out_of_range"),
    ({"properties": {"cost_usd_micros": 0.30000000000000004}}, "quantity_too_precise"),
    ({"properties": {"cost_usd_micros": "5", "card": "4242 4242 4242 4242"}}, "card_number"),
    ({"timestamp": "9999-01-01T00:00:00Z"}, "timestamp_in_future"),
    ({"timestamp": "2026-01-01T00:00:00Z"}, "timestamp_too_old"),
    ({"customer_id": "c" * 10_000}, "customer_id"),
    ({"subscription_id": "s" * 10_000}, "subscription_id"),
])
def test_what_the_edge_would_refuse_the_worker_refuses_when_it_comes_straight_from_kafka(payload, code):
    [refusal] = refusals([message(**payload)])
    assert code in refusal


def test_a_property_nested_990_levels_deep_is_refused_not_a_recursion_error():
    deep = message().replace(b'"cost_usd_micros":5', b'"cost_usd_micros":5,"d":' + b"[" * 990 + b"]" * 990)
    [refusal] = refusals([deep])
    assert "properties_too_deep" in refusal


def test_a_message_keyed_by_another_subscription_is_refused_by_the_single_writer_rule():
    assert refusals([message(), message()], [SUB.encode(), b"sub_other"]) == [
        "key_mismatch: key: the Kafka message key must be payload.subscription_id"]


def test_a_reception_claimed_after_the_billing_clock_is_refused_and_the_clock_read_again_when_it_moves():
    clock = ManualClock(NOW)
    materializer = UsageMaterializer(METERS, clock)
    later = (NOW + timedelta(hours=2)).isoformat()
    late = message(timestamp=later, received_at=later)

    assert [str(e).split(":")[0] for _, e in materializer.prepare([late], [SUB.encode()]).refused] == [
        "received_in_future"]
    clock.advance(timedelta(hours=2))
    assert materializer.prepare([late], [SUB.encode()]).refused == []


class _UnreachableClock:
    def now(self) -> datetime:
        raise sqlalchemy.exc.OperationalError("SELECT now", {}, Exception("connection refused"))


def test_an_unreadable_billing_clock_does_not_stop_the_batch():
    # The batch cannot commit while the clock's database is down; its retry is prepared again.
    prepared = UsageMaterializer(METERS, _UnreachableClock()).prepare([message()], [SUB.encode()])
    assert (len(prepared.lines), prepared.refused) == (1, [])


def test_an_envelope_whose_occurred_at_has_no_utc_equivalent_is_an_envelope_error_on_every_topic():
    raw = orjson.dumps({"type": "subscription.pause", "occurred_at": "9999-12-31T23:59:59-01:00", "producer": "kcat",
                        "payload": {}})
    with pytest.raises(EnvelopeError, match="no UTC equivalent"):
        Envelope.from_bytes(raw)


@pytest.mark.parametrize(("timestamp", "code"), [
    ("2026-02-04T11:00:01Z", None),  # received_at - 34 days exactly: the oldest accepted
    ("2026-02-04T11:00:00.999999Z", "timestamp_too_old"),
    ("2026-02-04T12:00:00.999999+01:00", "timestamp_too_old"),  # the same instant at another offset
    ("2026-03-10T11:05:01Z", None),  # received_at + 5 minutes exactly: the latest accepted
    ("2026-03-10T11:05:01.000001Z", "timestamp_in_future"),
    ("2026-03-10T06:05:01.000001-05:00", "timestamp_in_future"),
])
def test_the_event_window_bounds_hold_to_the_microsecond_on_both_decoding_paths(timestamp, code):
    # received_at is 2026-03-10T11:00:01Z; the fast path compares one difference, the models' path the window.
    materializer = UsageMaterializer(METERS)
    fast = [str(e).split(":")[0] for _, e in materializer.prepare([message(timestamp=timestamp)]).refused]
    careful = message(timestamp=timestamp).replace(b'"schema_version":1', b'"schema_version":1.0')
    slow = [str(e).split(":")[0] for _, e in materializer.prepare([careful]).refused]
    assert fast == slow == ([] if code is None else [code])


def test_an_invalid_instant_is_refused_every_time_it_comes_even_beside_valid_ones():
    # The decoder keeps the valid instants it has read; an invalid text must never be taken for one.
    bad = "2026-02-30T11:00:00Z"
    values = [message(), message(occurred_at=bad), message(timestamp=bad), message(received_at=bad), message()]
    assert len(refusals(values * 2)) == 6
