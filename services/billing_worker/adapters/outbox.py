"""The billing worker's side of the one outbox adapter (shared.adapters.postgres.outbox): rows written in the
caller's transaction, published by the relay (shared.adapters.kafka.outbox_relay)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from services.billing_worker.adapters.billing_repository import COPY_THRESHOLD, bulk_insert, copy_rows
from shared.adapters.postgres.outbox import add_to_outbox, bundle_insert_sql, outbox_row
from shared.adapters.postgres.schema.core import outbox
from shared.contracts import topics
from shared.contracts.envelope import Envelope

__all__ = ["add_outbox", "add_unit_of_work_outbox", "outbox_row"]


def add_outbox(conn: sa.Connection, envelope: Envelope, *, key: str, topic: str = topics.BILLING_EVENTS) -> None:
    """Write one outbox row in the caller's transaction; a second row with the same event_id is a no-op."""
    add_to_outbox(conn, [(topic, key, envelope)])


_RUN_COLUMNS = ("n", "topic", "message_key", "event_id", "event_type", "envelope")
_RUN_TABLE = "_bulk_outbox_run"
# NOTE: a message whose event_id is already in the outbox as a row (a replayed, deterministic id) is dropped
# before bundling, so that it cannot take the new messages of its bundle with it; an id inside an earlier
# bundle is not indexed and would be sent again, which consumers dedupe (the relay is at-least-once anyway).
_BUNDLE_RUN = sa.text(bundle_insert_sql(
    source=f"{_RUN_TABLE} r WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = r.event_id)",
    topic="r.topic", key="r.message_key", event_type="r.event_type", event_id="r.event_id",
    envelope="r.envelope", order="r.n", mixed_types=True)
    + "\n     ORDER BY min(r.n)\nON CONFLICT (event_id) DO NOTHING")


def add_unit_of_work_outbox(conn: sa.Connection, messages: Sequence[tuple[str, str, Envelope]]) -> None:
    """Write a unit of work's (topic, key, envelope) messages. A billing run's batch (COPY_THRESHOLD messages
    or more) is written as one bundle per (topic, key) in the order emitted: a close's ~4 messages of one
    subscription become one row, one publishing mark and three index entries instead of four of each. A
    smaller batch is written as plain rows."""
    if len(messages) < COPY_THRESHOLD:
        bulk_insert(conn, outbox, [outbox_row(envelope, key=key, topic=topic) for topic, key, envelope in messages],
                    ignore_conflicts_on=["event_id"])
        return
    conn.execute(sa.text(f"CREATE TEMP TABLE IF NOT EXISTS {_RUN_TABLE} ON COMMIT DROP AS "
                         f"SELECT 0 AS n, {', '.join(_RUN_COLUMNS[1:])} FROM outbox WITH NO DATA"))
    first_of: dict[uuid.UUID, int] = {}  # the first of several messages with one event id, as ON CONFLICT kept it
    for n, (_, _, envelope) in enumerate(messages):
        first_of.setdefault(envelope.event_id, n)
    copy_rows(conn, _RUN_TABLE, _RUN_COLUMNS, [
        {"n": n, **outbox_row(envelope, key=key, topic=topic)}
        for n, (topic, key, envelope) in enumerate(messages) if first_of[envelope.event_id] == n])
    conn.execute(_BUNDLE_RUN)
    conn.execute(sa.text(f"DELETE FROM {_RUN_TABLE}"))  # not TRUNCATE: cheap inside long, savepointed batches
