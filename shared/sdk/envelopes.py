"""Usage events as Kafka messages: the envelope written on `usage.v1`, keyed by subscription_id.

The bytes are exactly what `shared.contracts.envelope.Envelope.to_bytes` would write for a
`usage.recorded` envelope (consumers read them with `Envelope.from_bytes` + `UsageRecorded`), built with
orjson directly because this is the hottest path of the edge and the SDK.

`event_id` is derived from (customer_id, transaction_id): a re-sent event carries the same id, so any
consumer deduplicating on the envelope id or on (customer, transaction_id) drops the repeat.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Final

import orjson

from shared.adapters.kafka.producer import OutgoingMessage
from shared.contracts import topics
from shared.sdk.events import UsageEvent

USAGE_TYPE: Final = "usage.recorded"
_USAGE_NAMESPACE: Final = uuid.UUID("6f1c6a3e-3b0e-4f57-9d4c-9a61a2f1b0d7")
_NAMESPACE_BYTES: Final = _USAGE_NAMESPACE.bytes
_TYPE_HEADER: Final = USAGE_TYPE.encode()


def usage_event_id(customer_id: str, transaction_id: str) -> uuid.UUID:
    return uuid.uuid5(_USAGE_NAMESPACE, f"{customer_id}\x1f{transaction_id}")


def usage_event_id_text(customer_id: str, transaction_id: str) -> str:
    """`str(usage_event_id(...))` without building UUID objects (the hot path: one per event)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{customer_id}\x1f{transaction_id}".encode(),
                                    usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


@functools.lru_cache(maxsize=4096)
def _iso(at: datetime) -> str:
    # Cached: a batch shares one received_at, and producers' timestamps repeat (second resolution).
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def usage_message(event: UsageEvent, *, customer_id: str, subscription_id: str, received_at: datetime,
                  producer: str, correlation_id: str | None = None) -> OutgoingMessage:
    """The `usage.recorded` message for an event whose customer and subscription are resolved."""
    event_id = usage_event_id_text(customer_id, event.transaction_id)
    timestamp = _iso(event.timestamp)
    value = orjson.dumps({
        "event_id": event_id,
        "type": USAGE_TYPE,
        "schema_version": 1,
        "occurred_at": timestamp,
        "producer": producer,
        "correlation_id": correlation_id,
        "payload": {
            "transaction_id": event.transaction_id,
            "customer_id": customer_id,
            "subscription_id": subscription_id,
            "event_type": event.event_type,
            "timestamp": timestamp,
            "properties": event.properties,
            "received_at": _iso(received_at),
        },
    })
    return OutgoingMessage(topics.USAGE, subscription_id, value,
                           (("type", _TYPE_HEADER), ("event_id", event_id.encode())))
