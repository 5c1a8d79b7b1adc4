"""Fan-out of billing events into deliveries: one per subscribed enabled endpoint and event, replay-proof;
and the one table from internal event types to public names."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.webhooks.service_layer.fan_out import Consumed, fan_out
from shared.contracts.envelope import new_envelope
from shared.contracts.webhook_events import CATALOG, NOT_PRODUCED_YET, PUBLIC_NAME_OF, public_event

from .fakes import FakeDeliveryStore

pytestmark = pytest.mark.unit
AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def event(type_: str, sub: str = "sub_1", **payload: Any) -> Consumed:
    body = {"subscription_id": sub, "customer_id": "cus_1", **payload}
    return Consumed(new_envelope(type_, body, producer="billing-worker", occurred_at=AT), sub)


def test_each_subscribed_enabled_endpoint_gets_one_delivery_and_a_replay_adds_nothing() -> None:
    store = FakeDeliveryStore()
    store.add_endpoint("we_all", ["*"])
    store.add_endpoint("we_paid", ["invoice.paid"])
    store.add_endpoint("we_off", ["*"]).enabled = False
    batch = [event("invoice.finalized", invoice_id="in_1"), event("invoice.paid", invoice_id="in_1"),
             event("payment_method.updated", payment_method_id="pm_x")]
    assert fan_out(store, batch, AT) == 3
    assert fan_out(store, batch, AT) == 0  # consumed again after a crash before the offset commit
    assert store.status_of("we_all") == [("invoice.finalized", "pending"), ("invoice.paid", "pending")]
    assert store.status_of("we_paid") == [("invoice.paid", "pending")]
    assert store.status_of("we_off") == []


def test_the_body_is_id_type_created_and_data_with_the_kafka_key_as_ordering_key() -> None:
    store = FakeDeliveryStore()
    store.add_endpoint("we_all", ["*"])
    item = event("invoice.paid", sub="sub_9", invoice_id="in_1")
    fan_out(store, [item], AT)
    (row,) = store.rows.values()
    assert row.new.body == {"id": str(item.envelope.event_id), "type": "invoice.paid",
                            "created": int(AT.timestamp()), "data": item.envelope.payload}
    assert row.new.ordering_key == "sub_9" and row.new.event_id == item.envelope.event_id
    assert isinstance(row.new.delivery_id, uuid.UUID)


@pytest.mark.parametrize(("internal", "payload", "public"), [
    ("subscription.status_changed", {"old_status": None, "new_status": "trialing"}, "subscription.created"),
    ("subscription.status_changed", {"old_status": "trialing", "new_status": "active"}, "subscription.updated"),
    ("subscription.status_changed", {"old_status": "active", "new_status": "cancelled"}, "subscription.cancelled"),
    ("quota.on_track_to_exceed", {}, "quota.on_track_to_limit"),
    ("quota.limit_reached", {}, "quota.limit_reached"),
    ("invoice.voided", {}, "invoice.voided"),
    ("credits.expired", {}, "credits.expired"),
    ("payment.succeeded", {}, None),
])
def test_internal_types_map_to_public_names(internal: str, payload: dict[str, Any], public: str | None) -> None:
    assert public_event(internal, payload) == public


def test_every_public_name_is_reachable_from_the_table_and_the_catalog_names_what_is_not_produced() -> None:
    reachable = {public_event(t, {"old_status": None}) for t in PUBLIC_NAME_OF} | {
        "subscription.updated", "subscription.cancelled"}
    assert reachable == set(CATALOG)
    assert NOT_PRODUCED_YET <= set(CATALOG)
