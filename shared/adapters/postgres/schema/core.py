"""Tables every service shares: the transactional outbox and the billing clock."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from .base import created_at, metadata

# Rows written in the same transaction as the state change they announce; the relay publishes them in
# id order per key and marks them published. event_id is the consumers' dedupe key.
outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("topic", sa.Text, nullable=False, comment="logical topic name, e.g. billing-events.v1"),
    sa.Column("message_key", sa.Text, nullable=False),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("envelope", JSONB, nullable=False),
    created_at(),
    sa.Column("published_at", sa.DateTime(timezone=True)),
)
sa.Index("ix_outbox_unpublished", outbox.c.id, postgresql_where=outbox.c.published_at.is_(None))

# The billing clock. One row per clock id ('default' for the environment); a simulated clock is advanced
# through the edge (POST /v1/clock/advance) and read by every service, like Stripe's test clocks.
billing_clock = sa.Table(
    "billing_clock", metadata,
    sa.Column("clock_id", sa.Text, primary_key=True),
    sa.Column("now", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
