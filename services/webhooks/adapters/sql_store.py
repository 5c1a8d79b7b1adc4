"""`DeliveryStore` on PostgreSQL (schema: shared/adapters/postgres/schema/webhooks.py).

The claim is one statement: the due heads under the ordering rule (no earlier pending delivery to the same
endpoint with the same key) and the manual redeliveries, of enabled endpoints, not leased, at most
`per_endpoint` of one endpoint (so a slow endpoint with many due subscriptions cannot fill a round), locked
with FOR UPDATE SKIP LOCKED so several dispatchers share the work, then leased (wall clock) so the HTTP call
runs outside any transaction. A dispatcher that dies mid-send leaves a lease that simply expires. The
conditions a concurrent settle changes (lease, status) are repeated in the locking query so PostgreSQL
re-checks them on the row it locks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from services.webhooks.service_layer.model import AttemptResult, ClaimedDelivery, EndpointSubscription, NewDelivery
from services.webhooks.service_layer.ports import DeliveryStore, DeliveryStoreFactory
from shared.adapters.postgres.schema.webhooks import (
    webhook_deliveries,
    webhook_delivery_attempts,
    webhook_endpoint_notices,
    webhook_endpoints,
)

_INSERT_CHUNK = 500

_CLAIM = sa.text("""
WITH candidates AS (
    SELECT d.delivery_id, row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.seq) AS nth
      FROM webhook_deliveries d
      JOIN webhook_endpoints e ON e.endpoint_id = d.endpoint_id AND e.enabled
     WHERE (d.leased_until IS NULL OR d.leased_until < now())
       AND ((d.status = 'pending' AND d.next_attempt_at <= :now
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                              WHERE p.endpoint_id = d.endpoint_id AND p.ordering_key = d.ordering_key
                                AND p.status = 'pending' AND p.seq < d.seq))
            OR d.redeliver_requested_at IS NOT NULL)
), due AS (
    SELECT d.delivery_id
      FROM webhook_deliveries d
      JOIN candidates c ON c.delivery_id = d.delivery_id
     WHERE c.nth <= :per_endpoint
       AND (d.leased_until IS NULL OR d.leased_until < now())
       AND (d.status = 'pending' OR d.redeliver_requested_at IS NOT NULL)
     ORDER BY d.seq
     LIMIT :limit
       FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
   SET leased_until = now() + make_interval(secs => :lease)
  FROM due, webhook_endpoints e
 WHERE d.delivery_id = due.delivery_id AND e.endpoint_id = d.endpoint_id
RETURNING d.delivery_id, d.seq, d.endpoint_id, e.url, e.secret,
          CASE WHEN e.previous_secret_expires_at > :now THEN e.previous_secret END AS previous_secret,
          d.event_id, d.event_type, d.body, d.attempts,
          d.first_attempt_at, d.redeliver_requested_at IS NOT NULL AS manual
""")


class SqlDeliveryStore:
    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def enabled_endpoints(self) -> list[EndpointSubscription]:
        rows = self.conn.execute(sa.select(webhook_endpoints.c.endpoint_id, webhook_endpoints.c.events)
                                 .where(webhook_endpoints.c.enabled).order_by(webhook_endpoints.c.endpoint_id))
        return [EndpointSubscription(row.endpoint_id, list(row.events)) for row in rows]

    def add_deliveries(self, deliveries: Sequence[NewDelivery]) -> int:
        if not deliveries:
            return 0
        rows = [{"delivery_id": d.delivery_id, "endpoint_id": d.endpoint_id, "event_id": d.event_id,
                 "event_type": d.event_type, "ordering_key": d.ordering_key, "body": d.body,
                 "enqueued_at": d.enqueued_at, "next_attempt_at": d.enqueued_at} for d in deliveries]
        inserted = 0
        # NOTE: a multi-row VALUES is inserted row by row in its order, so `seq` (an identity) follows the
        # batch's (the partition's) order, which the ordering rule relies on.
        for start in range(0, len(rows), _INSERT_CHUNK):
            added = self.conn.execute(insert(webhook_deliveries).values(rows[start:start + _INSERT_CHUNK])
                                      .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
                                      .returning(webhook_deliveries.c.delivery_id)).all()
            inserted += len(added)
        return inserted

    def claim_due(self, now: datetime, limit: int, lease_seconds: float, per_endpoint: int) -> list[ClaimedDelivery]:
        rows = self.conn.execute(_CLAIM, {"now": now, "limit": limit, "lease": lease_seconds,
                                          "per_endpoint": per_endpoint}).all()
        claimed = [ClaimedDelivery(r.delivery_id, r.seq, r.endpoint_id, r.url,
                                   (r.secret, r.previous_secret) if r.previous_secret else (r.secret,),
                                   r.event_id, r.event_type,
                                   dict(r.body), r.attempts, r.first_attempt_at, r.manual) for r in rows]
        return sorted(claimed, key=lambda d: d.seq)

    def record_attempt(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime,
                       result: AttemptResult) -> None:
        self.conn.execute(webhook_delivery_attempts.insert().values(
            delivery_id=delivery.delivery_id, attempt_no=attempt_no, attempted_at=at, manual=delivery.manual,
            succeeded=result.succeeded, status_code=result.status_code, error=result.error,
            duration_ms=result.duration_ms))

    def _update(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime, result: AttemptResult,
                **values: Any) -> None:
        self.conn.execute(sa.update(webhook_deliveries)
                          .where(webhook_deliveries.c.delivery_id == delivery.delivery_id)
                          .values(attempts=attempt_no, last_attempt_at=at, last_status_code=result.status_code,
                                  last_error=result.error, leased_until=None,
                                  first_attempt_at=sa.func.coalesce(webhook_deliveries.c.first_attempt_at, at),
                                  **values))

    def mark_delivered(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime,
                       result: AttemptResult) -> None:
        self._update(delivery, attempt_no, at, result, status="delivered", delivered_at=at)

    def reschedule(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime, result: AttemptResult,
                   next_attempt_at: datetime) -> None:
        self._update(delivery, attempt_no, at, result, next_attempt_at=next_attempt_at)

    def abandon(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime, result: AttemptResult) -> None:
        self._update(delivery, attempt_no, at, result, status="abandoned")

    def finish_manual(self, delivery: ClaimedDelivery, attempt_no: int, at: datetime,
                      result: AttemptResult) -> None:
        extra: dict[str, Any] = {"status": "delivered", "delivered_at": at} if result.succeeded else {}
        self._update(delivery, attempt_no, at, result, redeliver_requested_at=None, **extra)

    def endpoint_succeeded(self, endpoint_id: str) -> None:
        self.conn.execute(sa.update(webhook_endpoints).where(webhook_endpoints.c.endpoint_id == endpoint_id,
                                                             webhook_endpoints.c.failing_since.isnot(None))
                          .values(failing_since=None))

    def endpoint_failed(self, endpoint_id: str, at: datetime) -> datetime:
        since = self.conn.execute(
            sa.update(webhook_endpoints).where(webhook_endpoints.c.endpoint_id == endpoint_id)
            .values(failing_since=sa.func.coalesce(webhook_endpoints.c.failing_since, at))
            .returning(webhook_endpoints.c.failing_since)).scalar_one()
        return since  # type: ignore[no-any-return]

    def disable_failing_endpoint(self, endpoint_id: str, at: datetime, message: str) -> int:
        self.conn.execute(sa.update(webhook_endpoints).where(webhook_endpoints.c.endpoint_id == endpoint_id)
                          .values(enabled=False, disabled_reason="failing", updated_at=sa.func.now()))
        abandoned = self.conn.execute(
            sa.update(webhook_deliveries)
            .where(webhook_deliveries.c.endpoint_id == endpoint_id, webhook_deliveries.c.status == "pending")
            .values(status="abandoned", leased_until=None)).rowcount
        self.conn.execute(webhook_endpoint_notices.insert().values(
            endpoint_id=endpoint_id, kind="endpoint_disabled", message=message, abandoned_deliveries=abandoned,
            occurred_at=at))
        return int(abandoned)


def sql_delivery_store(engine: sa.Engine) -> DeliveryStoreFactory:
    """One `engine.begin()` transaction per use of the store."""

    @contextmanager
    def begin() -> Iterator[DeliveryStore]:
        with engine.begin() as conn:
            yield SqlDeliveryStore(conn)

    return begin
