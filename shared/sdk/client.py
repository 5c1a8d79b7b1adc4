"""The producer SDK: report usage over HTTP (`HttpUsageClient`) or straight to Kafka (`KafkaUsageProducer`).

Both apply the same local checks as the edge (`shared.sdk.events.check_event`, the usage rules of
`shared.contracts.usage_rules`, which the worker applies too) before sending: an event the SDK sends is an
event the worker stores, and one it refuses raises `UsageRejectedError` (or pydantic.ValidationError for a
malformed event) with the rule's code, and nothing is sent.

- `HttpUsageClient` goes through the edge, which resolves the customer (id or alias) to its subscription
  and checks the plan. Batches of up to 1000 events; each batch carries an Idempotency-Key derived from
  its content, so a retry after a timeout replays the edge's first answer instead of re-sending.
  Retries: connection errors, 409 (in flight), 429 and 5xx, with exponential backoff.
- `KafkaUsageProducer` is for trusted producers inside the cluster that already know the subscription
  id (e.g. from the subscribe response). It resolves nothing: it writes the same `usage.recorded`
  envelope the edge writes, keyed by subscription_id, with an idempotent librdkafka producer (acks=all)
  that batches in librdkafka (`linger.ms`). `emit` hands one event to librdkafka at once; `emit_many`
  hands a whole list in one call (cheaper per event). `flush()`/`close()` raise if any message was not
  acknowledged. Its `now` (the reception instant written as `received_at`, which the time window is
  checked at) defaults to the wall clock: against a simulated billing clock pass the billing clock's now,
  since the worker refuses a `received_at` later than its billing clock (`received_in_future`).

# NOTE: the direct producer asks librdkafka for delivery reports of failures only
# (`delivery.report.only.error`): a message is acknowledged when `flush()` has nothing left outstanding
# and no failure was reported for it, so a success needs no Python callback at all.
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
from confluent_kafka import KafkaError, Message

from shared.config import Settings
from shared.contracts import topics
from shared.contracts.usage_rules import identifier_problem
from shared.errors import DeliveryError
from shared.sdk.envelopes import usage_value
from shared.sdk.events import (
    MAX_BATCH_EVENTS,
    EventWindow,
    UsageEvent,
    ValidEvent,
    check_event,
    utc_text,
    validated_event,
)
from shared.sdk.kafka import BatchProducer, KafkaMessage

RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class UsageRejectedError(ValueError):
    """An event failed the local checks; nothing was sent. `code` is the rule's machine-readable code."""

    def __init__(self, message: str, code: str = "invalid_event") -> None:
        super().__init__(message)
        self.code = code


def _checked(raw: UsageEvent | Mapping[str, Any], window: EventWindow) -> ValidEvent:
    event = validated_event(raw)  # pydantic.ValidationError (a ValueError) for a malformed event
    problem = check_event(event, window)
    if problem is not None:
        raise UsageRejectedError(f"{event.transaction_id}: {problem.code}: {problem.field}: {problem.reason}",
                                 problem.code)
    return event


def _encoded(event: ValidEvent, *, customer_id: str, subscription_id: str, received_at_utc: str,
             producer: str) -> bytes:
    """The message value; bad ids and an event JSON cannot carry (a lone surrogate in a string) are
    UsageRejectedError."""
    problem = (identifier_problem("subscription_id", subscription_id)
               or identifier_problem("customer_id", customer_id))
    if problem is not None:
        raise UsageRejectedError(f"{event.transaction_id}: {problem}", problem.code)
    try:
        return usage_value(event, customer_id=customer_id, subscription_id=subscription_id,
                           received_at_utc=received_at_utc, producer=producer)
    except TypeError as error:  # orjson.JSONEncodeError
        raise UsageRejectedError(f"{event.transaction_id}: not encodable as JSON: {error}") from error


def _validated(events: Iterable[UsageEvent | Mapping[str, Any]], now: datetime) -> list[ValidEvent]:
    window = EventWindow.at(now)
    return [_checked(raw, window) for raw in events]


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
            try:
                body = orjson.dumps([e.as_json() for e in batch])
            except TypeError as error:  # orjson.JSONEncodeError: a lone surrogate in a string
                raise UsageRejectedError(f"a batch is not encodable as JSON: {error}") from error
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


_POLL_EVERY = 10_000  # events between two polls serving failure reports


class KafkaUsageProducer:
    """Usage events straight to `usage.v1` (see the module docstring); not thread-safe."""

    def __init__(self, settings: Settings, *, producer_name: str, **overrides: Any) -> None:
        self._name = producer_name
        self._topic = settings.topic(topics.USAGE)
        self._kafka = BatchProducer(settings.kafka_producer_config(**{
            "client.id": producer_name, "delivery.report.only.error": True, **overrides}))
        self._failures: list[str] = []
        self._failed = 0
        self._lock = threading.Lock()
        self._produced = 0
        self._since_poll = 0
        self._keys: dict[str, bytes] = {}
        self._instant: tuple[datetime, EventWindow, str] | None = None

    @property
    def delivered(self) -> int:
        """Events acknowledged by Kafka so far (exact after `flush()`)."""
        with self._lock:
            failed = self._failed
        return self._produced - failed - self._kafka.outstanding()

    def _on_failure(self, err: KafkaError | None, _: Message | None = None) -> None:
        if err is not None:
            with self._lock:
                self._failures.append(str(err))
                self._failed += 1

    def _at(self, now: datetime | None) -> tuple[EventWindow, str]:
        """The check window and received_at text of an instant (reused while callers pass the same one)."""
        at = now or datetime.now(UTC)
        last = self._instant
        if last is None or last[0] is not at:
            last = self._instant = (at, EventWindow.at(at), utc_text(at))
        return last[1], last[2]

    def _key(self, subscription_id: str) -> bytes:
        key = self._keys.get(subscription_id)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            key = self._keys[subscription_id] = subscription_id.encode()
        return key

    def _served(self, count: int) -> None:
        self._produced += count
        self._since_poll += count
        if self._since_poll >= _POLL_EVERY:  # serve failure reports now and then, not per event
            self._since_poll = 0
            self._kafka.poll(0)

    def emit(self, event: UsageEvent | Mapping[str, Any], *, subscription_id: str, customer_id: str | None = None,
             now: datetime | None = None) -> None:
        """Queue one event (validated locally; UsageRejectedError or pydantic.ValidationError, nothing
        queued); `customer_id` defaults to the event's own."""
        window, received_at = self._at(now)
        checked = _checked(event, window)
        value = _encoded(checked, customer_id=customer_id or checked.customer_id, subscription_id=subscription_id,
                         received_at_utc=received_at, producer=self._name)
        self._kafka.produce_one(self._topic, self._key(subscription_id), value, self._on_failure)
        self._served(1)

    def emit_many(self, events: Iterable[UsageEvent | Mapping[str, Any]], *, subscription_id: str | None = None,
                  subscription_of: Mapping[str, str] | None = None, now: datetime | None = None) -> None:
        """Queue many events in one call to librdkafka, each to `subscription_id` or, given the mapping,
        to `subscription_of[event.customer_id]`. All are checked before any is queued: one invalid event
        (UsageRejectedError / pydantic.ValidationError) queues none."""
        window, received_at = self._at(now)
        batch: list[KafkaMessage] = []
        for raw in events:
            event = _checked(raw, window)
            subscription = subscription_id if subscription_of is None else subscription_of.get(event.customer_id)
            if subscription is None:
                raise UsageRejectedError(f"{event.transaction_id}: no subscription for {event.customer_id!r}")
            batch.append({"key": self._key(subscription), "value": _encoded(
                event, customer_id=event.customer_id, subscription_id=subscription, received_at_utc=received_at,
                producer=self._name)})
        count = len(batch)
        self._kafka.produce(self._topic, batch, self._on_failure)
        self._served(count)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every queued event is acknowledged; raise DeliveryError if any failed."""
        remaining = self._kafka.flush(timeout)
        with self._lock:
            failures, self._failures = self._failures, []
        if remaining or failures:
            raise DeliveryError(f"{remaining} unacknowledged, {len(failures)} failed: {failures[:3]}")

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
