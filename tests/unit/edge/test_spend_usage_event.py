"""A spend authorisation's usage event, written straight as JSON, is byte for byte the envelope the contract's
models make (consumers of usage.v1 see the same event as before it stopped building them)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.ingest.service_layer.spend import usage_envelope_json
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import UsageRecorded, parse_payload

pytestmark = pytest.mark.unit


def _through_the_models(event_id: uuid.UUID, properties: dict[str, Any], at: datetime) -> str:
    payload = UsageRecorded(transaction_id="req-7", customer_id="org-1", subscription_id="sub_org-1",
                            event_type="inference", timestamp=at, properties=properties, received_at=at)
    return new_envelope("usage.recorded", payload.model_dump(mode="json"), producer="ingest", occurred_at=at,
                        correlation_id="req-7", event_id=event_id).model_dump_json()


@pytest.mark.parametrize("at", [
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, 500_000, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 1, tzinfo=ZoneInfo("UTC")),
    datetime(2026, 6, 1, 0, 0, 0, 123, tzinfo=timezone(timedelta(0))),
])
@pytest.mark.parametrize("properties", [
    {"quantity": 1_000, "authorised": True},
    {"model": 'llämä "q"\n\\\u2028', "tokens": -5, "cached": False, "quantity": 10**15, "authorised": True},
])
def test_the_authorisation_event_is_the_envelope_the_contract_models_dump(at: datetime,
                                                                         properties: dict[str, Any]) -> None:
    event_id = uuid.uuid4()

    written = usage_envelope_json(event_id, "req-7", "org-1", "sub_org-1", "inference", properties, at)

    assert written == _through_the_models(event_id, properties, at)
    envelope = Envelope.model_validate_json(written)
    assert isinstance(parse_payload(envelope), UsageRecorded)
