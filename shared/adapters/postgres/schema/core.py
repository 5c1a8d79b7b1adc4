"""Tables every service shares: the transactional outbox and the billing clock."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB, UUID

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
    # NOTE: json, not jsonb: the envelope is written once and read once, as text, by the relay; jsonb parsed
    # and rebuilt it on every insert and printed it again on every read (COPY of 40,000 800-byte envelopes:
    # 0.6-0.9 s of PostgreSQL CPU as jsonb, 0.3-0.4 s as json; a billing run writes four per subscription).
    # ->, ->> and the casts work the same; nothing compares or indexes envelopes.
    sa.Column("envelope", JSON, nullable=False),
    created_at(),
    sa.Column("published_at", sa.DateTime(timezone=True)),
    # NOTE: a bundle is one row carrying several messages of one topic and key (its envelope a JSON array of
    # envelopes, its event_id the first one's), written where a group of events is born in one statement (the
    # edge's group commits: one usage event per admission). The relay sends each element as its own message,
    # in order. A row and its publishing mark cost 3 index entries and a never-HOT update per message; bundled,
    # per group (hot org, ~30 admissions per group: PostgreSQL's execution time -13 %, measured).
    # A billing run bundles each subscription's messages of the batch (~4 event types per close), and such a
    # bundle's event_type is MIXED_BUNDLE: each element is sent with its own envelope's type.
    sa.Column("bundled", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="envelope is a JSON array of envelopes, each sent as its own message"),
    # NOTE: a bundle also carries its elements' text lengths, event ids and (mixed bundles) types, so the relay
    # cuts the stored text into messages without parsing it. Expanding it in SQL (json_array_elements and a
    # `->>` per element, which parses the element) cost PostgreSQL ~20 µs per bundle of a billing run
    # in-process, 4x reading it whole (`shared.adapters.postgres.outbox.bundle_messages`).
    sa.Column("part_lengths", ARRAY(sa.Integer), comment="bundle: each element's length in characters"),
    sa.Column("part_event_ids", ARRAY(UUID(as_uuid=True)), comment="bundle: each element's event_id"),
    sa.Column("part_types", ARRAY(sa.Text), comment="mixed bundle: each element's type"),
)
# The stored event_type of a bundle whose messages are of several types (each element's own is its "type").
MIXED_BUNDLE = "mixed"
sa.Index("ix_outbox_unpublished", outbox.c.id, postgresql_where=outbox.c.published_at.is_(None))


def outbox_messages_sql(rows: str) -> str:
    """SQL of the messages of the outbox rows ``rows`` (a table or CTE with outbox's columns), one per result
    row: id, part (0 for a plain row, 1.. in a bundle, in order), topic, message_key, event_id (text),
    event_type, envelope (json), created_at, published_at: the ``outbox_messages`` view, which readers of what
    was published use (the relay cuts bundles itself, by their part columns: ``outbox.bundle_messages``). A
    bundle's messages share its event type, except in a ``MIXED_BUNDLE`` (each has its envelope's ``type``); an
    element without an event_id (none is written so) gets the row's."""
    # NOTE: two branches, not a LATERAL subquery per row: the per-row subquery (with the branch choice inside)
    # cost the relay's read ~5 µs per row, measured.
    return f"""
SELECT o.id, 0::bigint AS part, o.topic, o.message_key, o.event_id::text AS event_id, o.event_type, o.envelope,
       o.created_at, o.published_at
  FROM {rows} o WHERE NOT o.bundled
UNION ALL
SELECT o.id, e.part, o.topic, o.message_key, coalesce(e.value ->> 'event_id', o.event_id::text),
       CASE WHEN o.event_type = '{MIXED_BUNDLE}' THEN e.value ->> 'type' ELSE o.event_type END,
       e.value, o.created_at, o.published_at
  FROM {rows} o CROSS JOIN LATERAL json_array_elements(o.envelope) WITH ORDINALITY AS e(value, part)
 WHERE o.bundled"""


# One row per message, bundles unnested: what readers of "what was published" (operators, the audit, tests)
# look at, so a bundle reads like the rows it replaces.
_OUTBOX_MESSAGES_VIEW = sa.DDL(  # type: ignore[no-untyped-call]
    "CREATE VIEW outbox_messages AS SELECT id, part, topic, message_key, event_id::uuid AS event_id, event_type, "
    f"envelope, created_at, published_at FROM ({outbox_messages_sql('outbox')}) m")
sa.event.listen(outbox, "after_create", _OUTBOX_MESSAGES_VIEW)

# NOTE: an envelope larger than ~2 kB (a bundle: a hot org's group of ~30 usage events is ~17 kB) is compressed
# before it is stored. With PostgreSQL's default, pglz, that was 5.6 % of PostgreSQL's samples in the hot-org
# probe (perf), second only to the JSON lexer; lz4 compresses it several times faster and decompresses it
# faster for the relay, for ~8 % more bytes. Hot-org probe, three alternating pairs: the group statement's
# execution time -12 %, PostgreSQL's CPU -9 %. A server built without lz4 keeps pglz.
_OUTBOX_LZ4 = sa.DDL(  # type: ignore[no-untyped-call]
    "DO $$ BEGIN ALTER TABLE outbox ALTER COLUMN envelope SET COMPRESSION lz4; "
    "EXCEPTION WHEN feature_not_supported THEN NULL; END $$")
sa.event.listen(outbox, "after_create", _OUTBOX_LZ4)
sa.event.listen(outbox, "before_drop", sa.DDL("DROP VIEW IF EXISTS outbox_messages"))  # type: ignore[no-untyped-call]

# The billing clock. One row per clock id ('default' for the environment); a simulated clock is advanced
# through the edge (POST /v1/clock/advance) and read by every service, like Stripe's test clocks.
billing_clock = sa.Table(
    "billing_clock", metadata,
    sa.Column("clock_id", sa.Text, primary_key=True),
    sa.Column("now", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Customers are written by the edge at onboarding (not subscription state) and read by the worker
# (Stripe customer id, default payment method) and the dunning service (who to notify).
customers = sa.Table(
    "customers", metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("external_id", sa.Text, nullable=False, unique=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
    sa.Column("tax_rate_bps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("stripe_customer_id", sa.Text, unique=True),
    sa.Column("default_payment_method_id", sa.Text),
    sa.Column("invoice_grace_seconds", sa.Integer,
              comment="how long this customer's period-close invoices stay draft; NULL: the issuer's default"),
    sa.Column("custom_fields", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"),
              comment="the caller's string key/value pairs (Metronome's custom_fields)"),
    sa.Column("archived_at", sa.DateTime(timezone=True),
              comment="archived through the Metronome API: no longer listed by default, its history kept"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    created_at(),
    sa.CheckConstraint("kind IN ('user', 'org')", name="kind"),
    sa.CheckConstraint("invoice_grace_seconds BETWEEN 0 AND 7776000", name="invoice_grace_seconds"),
    sa.CheckConstraint("tax_rate_bps BETWEEN 0 AND 10000", name="tax_rate_bps"),
)

# Other ids a producer may use for the same customer (Metronome's "ingest aliases").
customer_aliases = sa.Table(
    "customer_aliases", metadata,
    sa.Column("alias", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.customer_id"), nullable=False, index=True),
)

org_members = sa.Table(
    "org_members", metadata,
    sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.customer_id"), primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("email", sa.Text),
    sa.Column("role", sa.Text, nullable=False, server_default="member"),
)

# The worker's answer to each command (keyed by the command's envelope event_id), so the edge can answer
# synchronously (200 with the subscription, 409 with the domain's reason) or let the client poll.
command_outcomes = sa.Table(
    "command_outcomes", metadata,
    sa.Column("command_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("subscription_id", sa.Text, nullable=False, index=True),
    sa.Column("command_type", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error_code", sa.Text),
    sa.Column("error_detail", sa.Text),
    sa.Column("result", JSONB),
    created_at(),
    sa.CheckConstraint("status IN ('applied', 'rejected', 'ignored')", name="status"),
)

# Exactly-once consumers keep their position here, in the same transaction as their effects (rule 2).
# `epoch` is bumped by each new owner on assignment; a commit must match the epoch it was assigned with,
# so a revoked or paused instance cannot commit late (its UPDATE hits no row and it rolls back).
consumer_offsets = sa.Table(
    "consumer_offsets", metadata,
    sa.Column("group_id", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("next_offset", sa.BigInteger, comment="NULL: nothing consumed yet (start at the beginning)"),
    sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("owner", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
