"""The billing worker's side of the one outbox adapter (shared.adapters.postgres.outbox): rows written in the
caller's transaction, published by the relay (shared.adapters.kafka.outbox_relay)."""

from __future__ import annotations

import sqlalchemy as sa

from shared.adapters.postgres.outbox import add_to_outbox, outbox_row
from shared.contracts import topics
from shared.contracts.envelope import Envelope

__all__ = ["add_outbox", "outbox_row"]


def add_outbox(conn: sa.Connection, envelope: Envelope, *, key: str, topic: str = topics.BILLING_EVENTS) -> None:
    """Write one outbox row in the caller's transaction; a second row with the same event_id is a no-op."""
    add_to_outbox(conn, [(topic, key, envelope)])
