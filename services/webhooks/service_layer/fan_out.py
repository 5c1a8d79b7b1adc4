"""Fan-out: one delivery row per enabled endpoint subscribed to a billing event.

Runs in the transaction of a consumed batch; the consumer commits its Kafka offsets only after it commits,
and a delivery is unique per (endpoint, event), so consuming a message again adds nothing: exactly one
delivery per endpoint and event. Endpoints are read when the event is consumed: one registered later does
not receive earlier events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.webhooks.service_layer.model import NewDelivery, delivery_id
from services.webhooks.service_layer.ports import DeliveryStore
from shared.contracts.envelope import Envelope
from shared.contracts.webhook_events import public_event, subscribes


@dataclass(frozen=True)
class Consumed:
    """One billing event as read from Kafka (its key is the ordering key)."""

    envelope: Envelope
    key: str | None


def body_of(envelope: Envelope, public_name: str) -> dict[str, Any]:
    """What the receiver gets: {id, type, created (unix seconds of the event), data (its payload)}."""
    return {"id": str(envelope.event_id), "type": public_name, "created": int(envelope.occurred_at.timestamp()),
            "data": envelope.payload}


def ordering_key_of(item: Consumed) -> str:
    payload = item.envelope.payload
    return item.key or str(payload.get("subscription_id") or payload.get("org_id") or "")


def fan_out(store: DeliveryStore, batch: Sequence[Consumed], at: datetime) -> int:
    """Write the deliveries of `batch` (in its order); returns how many rows were new."""
    endpoints = None
    deliveries: list[NewDelivery] = []
    for item in batch:
        name = public_event(item.envelope.type, item.envelope.payload)
        if name is None:
            continue
        if endpoints is None:
            endpoints = store.enabled_endpoints()
        body = body_of(item.envelope, name)
        deliveries += [NewDelivery(delivery_id(e.endpoint_id, item.envelope.event_id), e.endpoint_id,
                                   item.envelope.event_id, name, ordering_key_of(item), body, at)
                       for e in endpoints if subscribes(e.events, name)]
    return store.add_deliveries(deliveries) if deliveries else 0
