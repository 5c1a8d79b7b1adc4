"""The producer SDK: report usage over HTTP (`HttpUsageClient`) or straight to Kafka (`KafkaUsageProducer`).

Both apply the same local checks as the edge (`shared.sdk.events.check_event`) before sending.

- `HttpUsageClient` goes through the edge, which resolves the customer (id or alias) to its subscription
  and checks the plan. Batches of up to 1000 events; each batch carries an Idempotency-Key derived from
  its content, so a retry after a timeout replays the edge's first answer instead of re-sending.
  Retries: connection errors, 409 (in flight), 429 and 5xx, with exponential backoff.
- `KafkaUsageProducer` is for trusted producers inside the cluster that already know the subscription
  id (e.g. from the subscribe response). It resolves nothing: it writes the same `usage.recorded`
  envelope the edge writes, keyed by subscription_id, with an idempotent librdkafka producer (acks=all),
  batching and a delivery callback per message; `flush()`/`close()` raise if any message was not
  acknowledged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from confluent_kafka import KafkaError, Message, Producer

from shared.config import Settings
from shared.errors import DeliveryError
from shared.sdk.envelopes import usage_message
from shared.sdk.events import MAX_BATCH_EVENTS, UsageEvent, check_event

RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class UsageRejectedError(ValueError):
    """An event failed the local checks; nothing was sent."""


def _validated(events: Iterable[UsageEvent | Mapping[str, Any]], now: datetime) -> list[UsageEvent]:
    out: list[UsageEvent] = []
    for raw in events:
        event = raw if isinstance(raw, UsageEvent) else UsageEvent.model_validate(raw)
        problem = check_event(event, now)
        if problem is not None:
            raise UsageRejectedError(f"{event.transaction_id}: {problem.field}: {problem.reason}")
        out.append(event)
    return out


class HttpUsageClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0, max_retries: int = 5,
                 backoff_seconds: float = 0.2, transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}"})
        self._max_retries = max_retries
        self._backoff = backoff_seconds

    def send(self, events: Sequence[UsageEvent | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Send events in batches of 1000; returns the edge's per-event results, in order."""
        checked = _validated(events, datetime.now(UTC))
        results: list[dict[str, Any]] = []
        for start in range(0, len(checked), MAX_BATCH_EVENTS):
            batch = checked[start:start + MAX_BATCH_EVENTS]
            body = orjson.dumps([e.model_dump(mode="json") for e in batch])
            answer = self._post(body)
            results += [{**r, "index": r["index"] + start} for r in answer["results"]]
        return results

    def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"content-type": "application/json", "Idempotency-Key": hashlib.sha256(body).hexdigest()}
        for attempt in range(self._max_retries + 1):
            try:
                response = self._http.post("/v1/ingest", content=body, headers=headers)
            except httpx.TransportError:
                if attempt == self._max_retries:
                    raise
            else:
                if response.status_code not in RETRYABLE_STATUSES or attempt == self._max_retries:
                    response.raise_for_status()
                    result: dict[str, Any] = response.json()
                    return result
            time.sleep(self._backoff * 2 ** attempt)
        raise AssertionError("unreachable: the loop returns or raises")

    def close(self) -> None:
        self._http.close()


class KafkaUsageProducer:
    def __init__(self, settings: Settings, *, producer_name: str, **overrides: Any) -> None:
        self._settings = settings
        self._name = producer_name
        self._producer = Producer(settings.kafka_producer_config(**{"client.id": producer_name, **overrides}))
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self.delivered = 0

    def _on_delivery(self, err: KafkaError | None, _: Message) -> None:
        with self._lock:
            if err is not None:
                self._failures.append(str(err))
            else:
                self.delivered += 1

    def emit(self, event: UsageEvent | Mapping[str, Any], *, subscription_id: str, customer_id: str | None = None,
             now: datetime | None = None) -> None:
        """Queue one event (validated locally); `customer_id` defaults to the event's own."""
        [checked] = _validated([event], now or datetime.now(UTC))
        message = usage_message(checked, customer_id=customer_id or checked.customer_id,
                                subscription_id=subscription_id, received_at=now or datetime.now(UTC),
                                producer=self._name)
        while True:
            try:
                self._producer.produce(self._settings.topic(message.topic), key=message.key.encode(),
                                       value=message.value, headers=list(message.headers),
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve delivery reports, then retry
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every queued event is acknowledged; raise DeliveryError if any failed."""
        remaining = self._producer.flush(timeout)
        with self._lock:
            failures, self._failures = self._failures, []
        if remaining or failures:
            raise DeliveryError(f"{remaining} unacknowledged, {len(failures)} failed: {failures[:3]}")

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
