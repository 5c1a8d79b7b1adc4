"""Usage events as Kafka messages: the envelope written on `usage.v1`, keyed by subscription_id.

The bytes are exactly what `shared.contracts.envelope.Envelope.to_bytes` would write for a
`usage.recorded` envelope (consumers read them with `Envelope.from_bytes` + `UsageRecorded`), built with
orjson directly because this is the hottest path of the edge and the SDK.

`event_id` is derived from (customer_id, transaction_id): a re-sent event carries the same id, so any
consumer deduplicating on the envelope id or on (customer, transaction_id) drops the repeat.

# NOTE: usage messages carry no Kafka headers: the envelope is self-describing (`type`, `event_id`), no
# consumer reads headers of `usage.v1`, messages produced by other clients (kcat) have none, and two
# headers per message cost more CPU in the producer than building the envelope itself.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Final

import orjson

from shared.adapters.kafka.producer import OutgoingMessage
from shared.contracts import topics
from shared.sdk.events import UsageEvent, ValidEvent, utc_text

USAGE_TYPE: Final = "usage.recorded"
_USAGE_NAMESPACE: Final = uuid.UUID("6f1c6a3e-3b0e-4f57-9d4c-9a61a2f1b0d7")
_NAMESPACE_BYTES: Final = _USAGE_NAMESPACE.bytes
# uuid5 = the first 128 bits of SHA-1(namespace + name) with the version nibble set to 5 and the two top
# bits of the variant nibble set to 10: in hex, character 12 becomes "5" and character 16 one of "89ab".
_VARIANT_HEX: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def usage_event_id(customer_id: str, transaction_id: str) -> uuid.UUID:
    return uuid.uuid5(_USAGE_NAMESPACE, f"{customer_id}\x1f{transaction_id}")


def usage_event_id_text(customer_id: str, transaction_id: str) -> str:
    """`str(usage_event_id(...))` without building UUID objects (the hot path: one per event)."""
    name = f"{customer_id}\x1f{transaction_id}".encode()
    h = hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT_HEX[h[16]]}{h[17:20]}-{h[20:32]}"


def usage_value(event: ValidEvent, *, customer_id: str, subscription_id: str, received_at_utc: str,
                producer: str, correlation_id: str | None = None) -> bytes:
    """The value of the `usage.recorded` message (JSON bytes) for an event whose customer and
    subscription are resolved; `received_at_utc` is `utc_text(received_at)`, computed once per batch."""
    timestamp = event.timestamp_utc
    return orjson.dumps({
        "event_id": usage_event_id_text(customer_id, event.transaction_id),
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
            "received_at": received_at_utc,
        },
    })


def usage_message(event: UsageEvent | ValidEvent, *, customer_id: str, subscription_id: str,
                  received_at: datetime, producer: str, correlation_id: str | None = None) -> OutgoingMessage:
    """The `usage.recorded` message for an event whose customer and subscription are resolved."""
    valid = event if isinstance(event, ValidEvent) else ValidEvent.of(event)
    return OutgoingMessage(topics.USAGE, subscription_id, usage_value(
        valid, customer_id=customer_id, subscription_id=subscription_id, received_at_utc=utc_text(received_at),
        producer=producer, correlation_id=correlation_id))
