"""The outbox table as the billing worker writes it: one row per outgoing event, in the caller's transaction
(the relay, shared.adapters.kafka.outbox_relay, publishes them)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared.adapters.postgres.schema.core import outbox
from shared.contracts import topics
from shared.contracts.envelope import Envelope


def outbox_row(envelope: Envelope, *, key: str, topic: str = topics.BILLING_EVENTS) -> dict[str, Any]:
    return {"topic": topic, "message_key": key, "event_id": envelope.event_id, "event_type": envelope.type,
            "envelope": envelope.model_dump(mode="json")}


def add_outbox(conn: sa.Connection, envelope: Envelope, *, key: str, topic: str = topics.BILLING_EVENTS) -> None:
    """Write one outbox row in the caller's transaction; a second row with the same event_id is a no-op."""
    conn.execute(insert(outbox).values(**outbox_row(envelope, key=key, topic=topic))
                 .on_conflict_do_nothing(index_elements=["event_id"]))
