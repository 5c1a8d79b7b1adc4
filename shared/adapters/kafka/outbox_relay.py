"""Outbox relay: publishes the outbox rows the worker's transactions wrote, in id order, at least once.

One round: take the relay lock (a transaction-scoped advisory lock per database schema, so only one
instance publishes at a time and per-key order holds across instances), read up to `batch` unpublished
rows in id order from the ranges its cursor names (`outbox_cursor`: above the highest id it published, and
the gaps below it that a running transaction may still fill, instead of from the bottom every round), send
them all with the idempotent producer, wait for every acknowledgement, then mark them published in the same
transaction. A crash between the acknowledgement and the commit publishes those rows again: consumers dedupe
on the envelope's event_id. If any send fails, nothing is marked and the round is retried, so a later row of
a key is never marked while an earlier one is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from shared.adapters.kafka.outbox_cursor import OutboxCursor
from shared.adapters.kafka.producer import KafkaProducer
from shared.adapters.postgres.errors import describe
from shared.adapters.postgres.outbox import ROWS_COMMITTED, bundle_messages
from shared.adapters.retry_policy import is_retryable
from shared.observability import kv

log = logging.getLogger("billing_worker.relay")

# One statement per round for the lock, the snapshot's bounds and the read: the rows are read only when the
# lock was taken (a one-time filter, before any scan), and one row comes back even when none is found, for the
# snapshot's xmin and xmax (`outbox_cursor`), first. The ranges are read in id order, each through the
# unpublished index; `batch` counts rows. The envelope is read as its JSON text and sent as such: decoding it
# into a dict and encoding it again cost more CPU per row than the rest of the round. A bundle is read whole
# and cut into its messages here (`bundle_messages`): expanding it in the statement cost PostgreSQL 4x more.
_ROUND = sa.text("""
WITH leader AS MATERIALIZED (
  SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '/outbox-relay')) AS ok,
         pg_snapshot_xmin(pg_current_snapshot())::text AS xmin, pg_snapshot_xmax(pg_current_snapshot())::text AS xmax
), picked AS MATERIALIZED (
  SELECT r.* FROM leader l
   CROSS JOIN unnest(CAST(:los AS bigint[]), CAST(:his AS bigint[])) AS g(lo, hi)
   CROSS JOIN LATERAL (
     SELECT * FROM outbox WHERE published_at IS NULL AND id BETWEEN g.lo AND g.hi ORDER BY id LIMIT :batch) r
   WHERE l.ok
   ORDER BY r.id LIMIT :batch
)
SELECT l.ok, l.xmin, l.xmax, NULL::bigint AS id, NULL AS topic, NULL AS message_key, NULL AS event_id,
       NULL AS event_type, NULL AS value, NULL::boolean AS bundled, NULL::int[] AS part_lengths,
       NULL::text[] AS part_event_ids, NULL::text[] AS part_types
  FROM leader l
UNION ALL
SELECT NULL, NULL, NULL, p.id, p.topic, p.message_key, p.event_id::text, p.event_type, p.envelope::text, p.bundled,
       p.part_lengths, p.part_event_ids::text[], p.part_types
  FROM picked p
 ORDER BY id NULLS FIRST""")
_MARK = sa.text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)")


class OutboxRelay:
    def __init__(self, engine: sa.Engine, producer: KafkaProducer, *, batch: int = 2000,
                 idle_s: float = 0.1, max_backoff_s: float = 5.0) -> None:
        self._engine = engine
        self._producer = producer
        self._batch = batch
        self._idle = idle_s
        self._max_backoff = max_backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self._topics: dict[str, str] = {}
        self._cursor = OutboxCursor()

    def _topic(self, logical: str) -> str:
        physical = self._topics[logical] = self._producer.topic(logical)
        return physical

    def publish_round(self) -> int:
        """Publish up to one batch; returns how many rows were published (0: nothing to do or not leader)."""
        los, his = self._cursor.ranges()
        with self._engine.begin() as conn:
            result = conn.execute(_ROUND, {"batch": self._batch, "los": los, "his": his}).all()
            leader, xmin, xmax = result[0][:3]
            rows = result[1:]
            ids = [row[3] for row in rows]
            if not leader:
                return 0  # another relay holds the lock
            messages = self._messages(rows)
            if messages:
                self._producer.send_rows_and_wait(messages)
                conn.execute(_MARK, {"ids": ids})
        # only once the marks are committed: a round that failed leaves the cursor where it was
        self._cursor.published(ids, complete=len(ids) < self._batch, xmin=int(xmin), xmax=int(xmax))
        self.published += len(messages)
        return len(ids)

    def _messages(self, rows: Sequence[Any]) -> list[tuple[str, str, bytes, list[tuple[str, str | bytes | None]]]]:
        """The (physical topic, key, value, headers) of each message of the round's rows, in order."""
        topics = self._topics
        out = []
        for (*_, topic, key, event_id, event_type, value, bundled, lengths, event_ids, types) in rows:
            physical = topics.get(topic) or self._topic(topic)
            if not bundled:
                out.append((physical, key, value.encode(), [("type", event_type.encode()),
                                                            ("event_id", event_id.encode())]))
                continue
            for part_id, part_type, part in bundle_messages(value, lengths, event_ids, types, event_type, event_id):
                out.append((physical, key, part.encode(), [("type", part_type.encode()),
                                                           ("event_id", part_id.encode())]))
        return out

    def run(self) -> None:
        """Publish until stopped. A failed round is retried with capped backoff, never the end of the loop: a
        relay thread that died would silently stop every outgoing event while the worker looks healthy."""
        attempt = 0
        while not self._stop.is_set():
            ROWS_COMMITTED.clear()  # before the round: rows committed from here on are read by it or wake the next
            try:
                sent = self.publish_round()
            except Exception as error:
                attempt += 1
                delay = min(self._max_backoff, 0.05 * 2 ** min(attempt, 10))
                if not is_retryable(error):
                    log.exception("outbox relay round failed on an unexpected error; retrying",
                                  extra=kv(attempt=attempt, delay_s=delay))
                elif attempt == 1:  # an outage: said when it starts and when it ends, not every round
                    log.warning("outbox relay waiting for the database or the broker",
                                extra=kv(error=describe(error)[:300], error_class=type(error).__name__))
                self._stop.wait(delay)
                continue
            if attempt:
                log.info("outbox relay publishing again", extra=kv(failed_rounds=attempt))
                attempt = 0
            if sent < self._batch:
                ROWS_COMMITTED.wait(self._idle)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="outbox-relay", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        ROWS_COMMITTED.set()
        if self._thread is not None:
            self._thread.join(timeout)
        started = time.monotonic()
        self._producer.close(max(0.0, timeout - (time.monotonic() - started)))
