"""The records the webhook use cases and their ports talk in."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

_DELIVERY_NAMESPACE: Final = uuid.UUID("0b8f3c52-6a51-4f0e-9d6e-5f1c2e7a9b40")


def delivery_id(endpoint_id: str, event_id: uuid.UUID) -> uuid.UUID:
    """Deterministic: the same (endpoint, event) is always the same delivery."""
    return uuid.uuid5(_DELIVERY_NAMESPACE, f"{endpoint_id}|{event_id}")


@dataclass(frozen=True)
class EndpointSubscription:
    endpoint_id: str
    events: list[str]


@dataclass(frozen=True)
class NewDelivery:
    delivery_id: uuid.UUID
    endpoint_id: str
    event_id: uuid.UUID
    event_type: str
    ordering_key: str
    body: dict[str, Any]
    enqueued_at: datetime


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a dispatcher leased to send now, with what sending needs."""

    delivery_id: uuid.UUID
    seq: int
    endpoint_id: str
    url: str
    secrets: tuple[str, ...]  # the current secret first, then a rotated-out one still in its grace
    event_id: uuid.UUID
    event_type: str
    body: dict[str, Any]
    attempts: int
    first_attempt_at: datetime | None
    manual: bool


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt gave (the sender's `SendResult` in the service layer's terms)."""

    succeeded: bool
    status_code: int | None
    error: str | None
    duration_ms: int
