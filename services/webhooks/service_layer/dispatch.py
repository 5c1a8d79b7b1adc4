"""Dispatch: send the due deliveries, then settle each by its outcome (delivered, retried, abandoned).

1. claim (one short transaction): lease due deliveries (`DeliveryStore.claim_due`, ordering rule and SKIP
   LOCKED in the store);
2. send them concurrently (the caller's pool; the sender's HTTP timeout bounds each);
3. settle each in its own transaction: the attempt is logged, a 2xx delivers, anything else schedules the
   next attempt (`retry_schedule`) or abandons the delivery after 3 days; an endpoint that failed every
   attempt for 3 days is disabled with a notice and its pending deliveries abandoned.
A manual redelivery is one more attempt of the same event id, outside the schedule and the ordering rule.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from services.webhooks.service_layer import retry_schedule
from services.webhooks.service_layer.model import AttemptResult, ClaimedDelivery
from services.webhooks.service_layer.ports import DeliveryStoreFactory, Sender
from shared.observability import kv

_log = logging.getLogger("services.webhooks.dispatch")


class Pool(Protocol):
    def map(self, fn: Callable[[ClaimedDelivery], AttemptResult],
            items: Sequence[ClaimedDelivery]) -> Sequence[AttemptResult]: ...


def encode(body: object) -> bytes:
    """The bytes sent (and signed): compact JSON, keys in a stable order."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def claim(stores: DeliveryStoreFactory, now: datetime, limit: int, lease_seconds: float,
          per_endpoint: int) -> list[ClaimedDelivery]:
    with stores() as store:
        return store.claim_due(now, limit, lease_seconds, per_endpoint)


def send(sender: Sender, delivery: ClaimedDelivery) -> AttemptResult:
    return sender.send(delivery.url, encode(delivery.body), delivery.secrets)


def settle(stores: DeliveryStoreFactory, delivery: ClaimedDelivery, result: AttemptResult, now: datetime,
           jitter: float) -> str:
    """Record the outcome of one attempt; returns what became of the delivery (for logs and tests)."""
    attempt_no = delivery.attempts + 1
    with stores() as store:
        store.record_attempt(delivery, attempt_no, now, result)
        if result.succeeded:
            if delivery.manual:
                store.finish_manual(delivery, attempt_no, now, result)
            else:
                store.mark_delivered(delivery, attempt_no, now, result)
            store.endpoint_succeeded(delivery.endpoint_id)
            return "delivered"
        if delivery.manual:
            store.finish_manual(delivery, attempt_no, now, result)
            outcome = "manual_failed"
        else:
            retry_at = retry_schedule.next_attempt_at(attempt_no, delivery.first_attempt_at or now, now, jitter)
            if retry_at is None:
                store.abandon(delivery, attempt_no, now, result)
                outcome = "abandoned"
            else:
                store.reschedule(delivery, attempt_no, now, result, retry_at)
                outcome = "retry"
        failing_since = store.endpoint_failed(delivery.endpoint_id, now)
        if retry_schedule.endpoint_to_disable(failing_since, now):
            message = (f"webhook endpoint {delivery.endpoint_id} ({delivery.url}) failed every attempt since "
                       f"{failing_since.isoformat()}: disabled; re-enable it with PATCH enabled=true")
            abandoned = store.disable_failing_endpoint(delivery.endpoint_id, now, message)
            _log.warning("webhook endpoint disabled", extra=kv(endpoint_id=delivery.endpoint_id,
                                                                failing_since=failing_since.isoformat(),
                                                                abandoned_deliveries=abandoned))
            outcome = "endpoint_disabled"
    return outcome


def dispatch_due(stores: DeliveryStoreFactory, sender: Sender, pool: Pool, now: datetime, *,
                 limit: int = 100, per_endpoint: int = 25, lease_seconds: float = 60.0,
                 jitter: Callable[[], float] = lambda: 0.5) -> list[tuple[ClaimedDelivery, str]]:
    """One round: claim, send concurrently, settle. Returns each delivery tried with its outcome."""
    claimed = claim(stores, now, limit, lease_seconds, per_endpoint)
    if not claimed:
        return []
    results = pool.map(lambda d: send(sender, d), claimed)
    done = []
    for delivery, result in zip(claimed, results, strict=True):
        outcome = settle(stores, delivery, result, now, jitter())
        _log.info("webhook attempt", extra=kv(delivery_id=str(delivery.delivery_id), event_id=str(delivery.event_id),
                                              endpoint_id=delivery.endpoint_id, event_type=delivery.event_type,
                                              status_code=result.status_code, outcome=outcome))
        done.append((delivery, outcome))
    return done
