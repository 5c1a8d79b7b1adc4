"""Tables of the usage area: deduplicated events, hourly aggregates, and what each period close billed.

Written only by the billing worker that owns the subscription's partition
(services/billing_worker/adapters/usage_close.py documents the late-event policy); read by the edge for "usage so
far".
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from .base import metadata

# NOTE: the identifier columns that key the hot-path indexes compare bytewise (COLLATE "C"): the same
# equality as any deterministic collation, so dedupe and lookups are unchanged, but index maintenance
# skips the locale's strcoll (about a fifth of PostgreSQL's CPU per materialised event under C.UTF-8).
# Only their sort order differs, and nothing orders these identifiers for people.
KEY_TEXT = sa.Text(collation="C")

# One row per accepted usage event. The primary key is the dedupe constraint: a (customer, transaction_id)
# pair is counted once for as long as its row exists (kept >= 34 days, and until the period it falls in
# is closed). The row keeps what traces an invoice line back to its events: subscription, meter,
# quantity and the event's own timestamp.
usage_events = sa.Table(
    "usage_events", metadata,
    sa.Column("customer_id", KEY_TEXT, primary_key=True),
    sa.Column("transaction_id", KEY_TEXT, primary_key=True),
    sa.Column("subscription_id", KEY_TEXT, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("meter_id", KEY_TEXT, comment="NULL: the event type feeds no meter of the catalog"),
    sa.Column("quantity", sa.Numeric, nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, comment="the event's timestamp"),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, comment="accepted by the edge"),
    sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
sa.Index("ix_usage_events_subscription_time", usage_events.c.subscription_id, usage_events.c.occurred_at)

# Sum of event quantities per subscription, meter and UTC hour of the event timestamp, upserted once per
# key per consumed batch. billed_* is what period closes have already invoiced from this bucket: a late
# event raises quantity above billed_quantity and the next close bills the difference as an adjustment.
usage_aggregates = sa.Table(
    "usage_aggregates", metadata,
    sa.Column("subscription_id", KEY_TEXT, primary_key=True),
    sa.Column("meter_id", KEY_TEXT, primary_key=True),
    sa.Column("bucket_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("quantity", sa.Numeric, nullable=False),
    sa.Column("event_count", sa.BigInteger, nullable=False),
    sa.Column("billed_quantity", sa.Numeric, nullable=False, server_default="0"),
    sa.Column("billed_events", sa.BigInteger, nullable=False, server_default="0"),
    # NOTE: updated_at is written only by ingest (the batch transaction's now(), which is also every event
    # row's ingested_at); billed_through copies it when a close bills the bucket. A subscription's usage
    # batches commit one after another (one consumer per partition), so the bucket's events a close billed
    # are exactly those with ingested_at <= the billed_through it wrote (invoice line -> events).
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("billed_through", sa.DateTime(timezone=True),
              comment="ingested_at of the newest event billed from this bucket (updated_at when billed)"),
)

# Per subscription: the end of the last closed usage period (what "late" is measured against).
usage_watermarks = sa.Table(
    "usage_watermarks", metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("closed_through", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# What each period close returned: per-meter totals of the period and late adjustments (with the hour
# buckets they came from), so an invoice line can be traced to buckets and events, and a repeated close
# of the same period returns the same answer.
usage_closes = sa.Table(
    "usage_closes", metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("period_end", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("totals", JSONB, nullable=False, comment="{meter_id: decimal string}"),
    sa.Column("late", JSONB, nullable=False,
              comment="[{meter_id, bucket_start, quantity, ingested_after, ingested_through}]: the late "
                      "events billed are the bucket's with ingested_at in (ingested_after, ingested_through]"),
    sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
