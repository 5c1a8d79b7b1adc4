"""The usage of a meter with a dimension is aggregated per value of its property, under "<meter>/<value>"
(the meter id rating prices by the plan's dimension prices); an event without a usable value is billed at the
meter's default price, never dropped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.billing_worker.adapters.usage import MeterMap, MeterRule, UsageMaterializer
from shared.contracts.envelope import new_envelope
from tests.fixtures import priced_catalog

pytestmark = pytest.mark.unit

AT = datetime(2026, 1, 5, 10, tzinfo=UTC)


def raw(properties: dict[str, object], tx: str) -> bytes:
    return new_envelope("usage.recorded", {
        "transaction_id": tx, "customer_id": "cus_1", "subscription_id": "sub_1", "event_type": "inference_tokens",
        "timestamp": AT.isoformat(), "properties": properties, "received_at": AT.isoformat()},
        producer="test", occurred_at=AT).to_bytes()


@pytest.mark.parametrize(("properties", "meter"), [
    ({"tokens": 10, "model": "gpt-4o"}, "tokens/gpt-4o"),
    ({"tokens": 10, "model": "meta-llama/Llama-3-70b"}, "tokens/meta-llama/Llama-3-70b"),
    ({"tokens": 10, "model": 7}, "tokens/7"),
    ({"tokens": 10}, "tokens"),  # no model: the default price
    ({"tokens": 10, "model": ["gpt-4o"]}, "tokens"),
    ({"tokens": 10, "model": " "}, "tokens"),
])
def test_an_event_is_aggregated_under_its_dimension_value(properties: dict[str, object], meter: str) -> None:
    materializer = UsageMaterializer(MeterMap.from_catalog(priced_catalog()))
    assert materializer.decode(raw(properties, "tx_1")).meter_id == meter
    prepared = materializer.prepare([raw(properties, "tx_2")])
    assert prepared.refused == [] and prepared.lines[0].split("\t")[4] == meter


def test_a_meter_without_a_dimension_keeps_its_id() -> None:
    assert MeterRule("inference", "cost_usd_micros").meter_of({"model": "gpt-4o"}) == "inference"
