"""In-memory fakes of the webhook ports (the store applies `ordering.due`, like the SQL claim)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.webhooks.service_layer.model import AttemptResult, ClaimedDelivery, EndpointSubscription, NewDelivery
from services.webhooks.service_layer.ordering import PendingRef, due


@dataclass
class Row:
    seq: int
    new: NewDelivery
    status: str = "pending"
    attempts: int = 0
    next_attempt_at: datetime | None = None
    first_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    redeliver: bool = False


@dataclass
class FakeEndpoint:
    endpoint_id: str
    url: str
    events: list[str]
    secret: str = "whsec_test"
    enabled: bool = True
    failing_since: datetime | None = None
    disabled_reason: str | None = None


@dataclass
class FakeDeliveryStore:
    endpoints: dict[str, FakeEndpoint] = field(default_factory=dict)
    rows: dict[uuid.UUID, Row] = field(default_factory=dict)
    attempts: list[tuple[uuid.UUID, int, datetime, AttemptResult, bool]] = field(default_factory=list)
    notices: list[tuple[str, str, int]] = field(default_factory=list)
    _seq: int = 0

    def add_endpoint(self, endpoint_id: str, events: list[str], url: str | None = None) -> FakeEndpoint:
        endpoint = FakeEndpoint(endpoint_id, url or f"http://{endpoint_id}.test/hook", events)
        self.endpoints[endpoint_id] = endpoint
        return endpoint

    @contextmanager
    def __call__(self) -> Iterator[FakeDeliveryStore]:
        yield self

    # --- DeliveryStore

    def enabled_endpoints(self) -> list[EndpointSubscription]:
        return [EndpointSubscription(e.endpoint_id, list(e.events)) for e in self.endpoints.values() if e.enabled]

    def add_deliveries(self, deliveries: Sequence[NewDelivery]) -> int:
        added = 0
        for d in deliveries:
            if any(r.new.endpoint_id == d.endpoint_id and r.new.event_id == d.event_id for r in self.rows.values()):
                continue
            self._seq += 1
            self.rows[d.delivery_id] = Row(self._seq, d, next_attempt_at=d.enqueued_at)
            added += 1
        return added

    def claim_due(self, now: datetime, limit: int, lease_seconds: float, per_endpoint: int) -> list[ClaimedDelivery]:
        enabled = {e for e, v in self.endpoints.items() if v.enabled}
        pending = [PendingRef(r.seq, r.new.endpoint_id, r.new.ordering_key, r.next_attempt_at or now)
                   for r in self.rows.values() if r.status == "pending"]
        seqs = {ref.seq for ref in due(pending, now)} | {r.seq for r in self.rows.values() if r.redeliver}
        chosen, taken = [], Counter[str]()
        for r in sorted(self.rows.values(), key=lambda r: r.seq):
            if r.seq in seqs and r.new.endpoint_id in enabled and taken[r.new.endpoint_id] < per_endpoint:
                taken[r.new.endpoint_id] += 1
                chosen.append(r)
        chosen = chosen[:limit]
        return [self._claimed(r) for r in chosen]

    def _claimed(self, r: Row) -> ClaimedDelivery:
        e = self.endpoints[r.new.endpoint_id]
        return ClaimedDelivery(r.new.delivery_id, r.seq, e.endpoint_id, e.url, (e.secret,), r.new.event_id,
                               r.new.event_type, r.new.body, r.attempts, r.first_attempt_at, r.redeliver)

    def record_attempt(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime,
                       result: AttemptResult) -> None:
        self.attempts.append((delivery.delivery_id, attempt_no, at, result, delivery.manual))

    def _touch(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime, **values: Any) -> None:
        row = self.rows[delivery.delivery_id]
        row.attempts = attempt_no
        row.first_attempt_at = row.first_attempt_at or at
        for k, v in values.items():
            setattr(row, k, v)

    def mark_delivered(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime,
                       result: AttemptResult) -> None:
        self._touch(delivery, attempt_no, at, status="delivered", delivered_at=at)

    def reschedule(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime, result: AttemptResult,
                   next_attempt_at: datetime) -> None:
        self._touch(delivery, attempt_no, at, next_attempt_at=next_attempt_at)

    def abandon(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime, result: AttemptResult) -> None:
        self._touch(delivery, attempt_no, at, status="abandoned")

    def finish_manual(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime,
                      result: AttemptResult) -> None:
        extra = {"status": "delivered", "delivered_at": at} if result.succeeded else {}
        self._touch(delivery, attempt_no, at, redeliver=False, **extra)

    def endpoint_succeeded(self, endpoint_id: str) -> None:
        self.endpoints[endpoint_id].failing_since = None

    def endpoint_failed(self, endpoint_id: str, at: datetime) -> datetime:
        endpoint = self.endpoints[endpoint_id]
        endpoint.failing_since = endpoint.failing_since or at
        return endpoint.failing_since

    def disable_failing_endpoint(self, endpoint_id: str, at: datetime, message: str) -> int:
        endpoint = self.endpoints[endpoint_id]
        endpoint.enabled, endpoint.disabled_reason = False, "failing"
        abandoned = 0
        for row in self.rows.values():
            if row.new.endpoint_id == endpoint_id and row.status == "pending":
                row.status, abandoned = "abandoned", abandoned + 1
        self.notices.append((endpoint_id, message, abandoned))
        return abandoned

    # --- test helpers

    def status_of(self, endpoint_id: str) -> list[tuple[str, str]]:
        return [(r.new.event_type, r.status) for r in sorted(self.rows.values(), key=lambda r: r.seq)
                if r.new.endpoint_id == endpoint_id]


@dataclass
class ScriptedSender:
    """Answers per URL: `down` URLs fail (HTTP 500); every call is recorded (url, body)."""

    down: set[str] = field(default_factory=set)
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def send(self, url: str, body: bytes, secrets: Sequence[str]) -> AttemptResult:
        self.sent.append((url, body))
        if url in self.down:
            return AttemptResult(False, 500, "HTTP 500", 3)
        return AttemptResult(True, 200, None, 2)


class InlinePool:
    def map(self, fn: Any, items: Sequence[ClaimedDelivery]) -> list[AttemptResult]:
        return [fn(item) for item in items]
