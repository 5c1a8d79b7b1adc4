"""Issue 15, item 5: the events now produced (alert.triggered, credits.balance_low, invoice.drafted) fan out to
the endpoints subscribed to them, with the worker's payloads as `data`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.webhooks.service_layer.fan_out import Consumed, fan_out
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import AlertTriggered, CreditsBalanceLow, parse_payload

from .fakes import FakeDeliveryStore

pytestmark = pytest.mark.unit
AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
PERIOD = datetime(2026, 3, 1, tzinfo=UTC)


def test_alert_and_low_credit_events_reach_the_endpoints_subscribed_to_them() -> None:
    spend = AlertTriggered(subscription_id="sub_1", customer_id="cus_1", amount_minor=250, threshold_minor=200,
                           currency="USD", period_start=PERIOD)
    low = CreditsBalanceLow(subscription_id="sub_1", customer_id="cus_1", meter_id="inference", remaining_minor=-50,
                            threshold_minor=150, currency="USD", period_start=PERIOD)
    batch = [Consumed(new_envelope(t, p.model_dump(mode="json"), producer="billing-worker", occurred_at=AT), "sub_1")
             for t, p in (("alert.triggered", spend), ("credits.balance_low", low))]
    assert [type(parse_payload(c.envelope)).__name__ for c in batch] == ["AlertTriggered", "CreditsBalanceLow"]
    store = FakeDeliveryStore()
    store.add_endpoint("we_alerts", ["alert.triggered"])
    store.add_endpoint("we_all", ["*"])
    assert fan_out(store, batch, AT) == 3
    assert store.status_of("we_alerts") == [("alert.triggered", "pending")]
    assert store.status_of("we_all") == [("alert.triggered", "pending"), ("credits.balance_low", "pending")]
    data = sorted((r.new.body["type"], r.new.body["data"]["threshold_minor"]) for r in store.rows.values())
    assert data == [("alert.triggered", 200), ("alert.triggered", 200), ("credits.balance_low", 150)]
