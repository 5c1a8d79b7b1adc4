"""Usage written straight to usage.v1 (kcat, a buggy producer) that breaks a usage rule is dead-lettered with
the rule's code; the worker stays up, the partition goes on, and what it accepts is stored and billed
exactly (issue 12: defects 1 and 3)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from services.billing_worker.adapters.usage_close import close_usage
from services.billing_worker.bootstrap import build_worker
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.contracts import topics
from tests.integration.worker.harness import drain, materialised
from tests.integration.worker.test_poison import read_dlq

pytestmark = pytest.mark.integration

SUB = "sub_usage_poison"
# The worker runs on the real clock: a reception an hour ago, within every window.
AT = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
LARGEST = "9999999999999999999.999999999"  # the largest quantity the rules accept: 28 significant digits


def value(tx: str, *, occurred_at: str | None = None, **payload: Any) -> bytes:
    body = {"transaction_id": tx, "customer_id": "cus_poison", "subscription_id": SUB, "event_type": "inference",
            "timestamp": AT.isoformat(), "properties": {"cost_usd_micros": 10}, "received_at": AT.isoformat(),
            **payload}
    return orjson.dumps({"event_id": str(uuid.uuid4()), "type": "usage.recorded", "schema_version": 1,
                         "occurred_at": occurred_at or AT.isoformat(), "producer": "kcat", "correlation_id": None,
                         "payload": body})


POISON = {
    "occurred_at_overflow": (SUB, value("p-1", occurred_at="9999-12-31T23:59:59-01:00")),
    "timestamp_overflow": (SUB, value("p-2", timestamp="0001-01-01T00:00:00+01:00")),
    "negative": (SUB, value("p-3", properties={"cost_usd_micros": -1_000_000})),
    "nan_string": (SUB, value("p-4", properties={"cost_usd_micros": "NaN"})),
    "huge": (SUB, value("p-5", properties={"cost_usd_micros": 1e300})),
    "key_mismatch": ("sub_somebody_else", value("p-6")),
    "year_9999": (SUB, value("p-7", timestamp="9999-01-01T00:00:00Z", received_at="9999-01-01T00:00:00Z")),
    "future_timestamp": (SUB, value("p-8", timestamp=(AT + timedelta(days=2)).isoformat())),
    "oversized_customer": (SUB, value("p-9", customer_id="c" * 10_000)),
    "card_number": (SUB, value("p-10", properties={"cost_usd_micros": 1, "card": "4242 4242 4242 4242"})),
    "deep": (SUB, value("p-11").replace(b'"cost_usd_micros":10', b'"cost_usd_micros":10,"d":'
                                        + b"[" * 990 + b"]" * 990)),
}
CODES = {"negative": b"invalid_property", "nan_string": b"invalid_property", "huge": b"quantity_out_of_range",
         "key_mismatch": b"key_mismatch", "year_9999": b"received_in_future",
         "future_timestamp": b"timestamp_in_future", "card_number": b"card_number", "deep": b"properties_too_deep",
         "occurred_at_overflow": b"UTC", "timestamp_overflow": b"UTC", "oversized_customer": b"customer_id"}


@pytest.fixture(scope="module")
def run(settings, engine):  # type: ignore[no-untyped-def]
    good = [(SUB, value("good-1")), (SUB, value("good-2", properties={"cost_usd_micros": LARGEST}))]
    ordered = [good[0], *POISON.values(), good[1]]
    producer = KafkaProducer(settings, client_id="usage-poison-test")
    producer.send_and_wait([OutgoingMessage(topics.USAGE, key, raw) for key, raw in ordered])
    producer.close()
    worker = build_worker(settings, relay=False, handlers={}, background=False)
    try:
        drain(worker, engine)
    finally:
        worker.consumer.close()


def test_every_poison_message_is_dead_lettered_with_its_reason_and_the_worker_goes_on(run, settings, engine):
    letters = {m.value(): dict(m.headers()) for m in read_dlq(settings, topics.USAGE, len(POISON))}

    assert len(letters) == len(POISON)
    for name, (_, raw) in POISON.items():
        assert CODES[name] in letters[raw]["error"], (name, letters[raw]["error"])


def test_only_the_valid_usage_is_stored_and_a_close_bills_the_largest_quantity_exactly(run, engine):
    quantity, _, rows = materialised(engine)
    expected = Decimal("10000000000000000009.999999999")  # 29 digits: PostgreSQL and the close sum exactly
    assert (quantity, rows) == ({SUB: expected}, 2)
    with engine.begin() as conn:
        close = close_usage(conn, SUB, AT - timedelta(days=1), AT + timedelta(days=1))
    assert close.totals == {"inference": expected}
