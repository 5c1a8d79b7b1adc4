"""The ordering rule: per (endpoint, subscription), events are delivered in the order they were published.

A delivery is due when its time has come AND no earlier delivery (lower `seq`) to the same endpoint with the
same ordering key (the Kafka key: the subscription, or the org of a quota alert) is still pending: a later
invoice.paid never overtakes its invoice.finalized while the receiver is down. Deliveries to other endpoints
or of other subscriptions are independent. The PostgreSQL store applies the same rule in its claim query
(`adapters/sql_store.py`, NOT EXISTS an earlier pending row); the fake store in the unit tests uses this.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class PendingRef:
    seq: int
    endpoint_id: str
    ordering_key: str
    next_attempt_at: datetime


def due(pending: Iterable[PendingRef], now: datetime) -> list[PendingRef]:
    """The pending deliveries that may be sent at `now`, by seq: the head of each (endpoint, key), if due."""
    heads: dict[tuple[str, str], PendingRef] = {}
    for ref in sorted(pending, key=lambda r: r.seq):
        heads.setdefault((ref.endpoint_id, ref.ordering_key), ref)
    return sorted((ref for ref in heads.values() if ref.next_attempt_at <= now), key=lambda r: r.seq)
