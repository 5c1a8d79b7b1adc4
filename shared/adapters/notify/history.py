"""Read side of the notifications the dunning service sent: what, when, to whom, and whether it arrived.

The edge exposes it (GET /v1/notifications); services never import each other, so the query lives here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared.adapters.postgres.schema.dunning import dunning_notifications as n

MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class SentNotification:
    notification_id: uuid.UUID
    customer_id: str
    subscription_id: str
    invoice_id: str
    kind: str
    channel: str
    recipient: str | None
    subject: str
    decided_at: datetime
    status: str
    attempts: int
    delivered_at: datetime | None
    last_error: str | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NotificationPage:
    items: list[SentNotification]
    next_cursor: str | None
    """Pass back as ``cursor`` for the next (older) page; None on the last page."""


class InvalidCursorError(ValueError):
    """The cursor was not produced by ``list_notifications``."""


def list_notifications(conn: sa.Connection, customer_id: str | None = None, cursor: str | None = None,
                       limit: int = 50) -> NotificationPage:
    """Notifications newest first, optionally for one customer; keyset-paginated by an opaque cursor."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must lie in 1..{MAX_PAGE}, got {limit}")
    query = sa.select(n).order_by(n.c.seq.desc()).limit(limit + 1)
    if customer_id is not None:
        query = query.where(n.c.customer_id == customer_id)
    if cursor is not None:
        if not cursor.isdigit():
            raise InvalidCursorError(f"invalid cursor {cursor!r}")
        query = query.where(n.c.seq < int(cursor))
    rows = conn.execute(query).all()
    page = rows[:limit]
    items = [
        SentNotification(
            notification_id=row.notification_id, customer_id=row.customer_id,
            subscription_id=row.subscription_id, invoice_id=row.invoice_id, kind=row.kind,
            channel=row.channel, recipient=row.recipient, subject=row.subject, decided_at=row.decided_at,
            status=row.status, attempts=row.attempts, delivered_at=row.delivered_at,
            last_error=row.last_error, data=dict(row.data))
        for row in page
    ]
    next_cursor = str(page[-1].seq) if len(rows) > limit else None
    return NotificationPage(items=items, next_cursor=next_cursor)
