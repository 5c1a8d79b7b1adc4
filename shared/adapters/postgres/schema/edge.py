"""Tables of the edge area (services/ingest): API keys, idempotency keys, webhook dedupe and the audit trail.

The edge never writes subscription or invoice state; these tables are its own bookkeeping.
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from .base import created_at, metadata

# API keys are stored as the SHA-256 of the whole presented token. The secret part is 256 random bits,
# so a slow password hash buys nothing against brute force and would put ~100 ms on every request.
# `org_id` binds `ingest`/`read` keys to one customer (user or organisation); `producer` names a trusted
# producer identity whose `ingest` key may report usage for any customer.
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False),
    sa.Column("org_id", sa.Text, sa.ForeignKey("customers.customer_id")),
    sa.Column("producer", sa.Text),
    sa.Column("created_by", sa.Text, nullable=False),
    created_at(),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("cardinality(scopes) >= 1", name="scopes_not_empty"),
)

# Idempotency-Key records (Stripe / IETF draft semantics). The row is inserted in its own transaction
# *before* the work (status in_flight), so a concurrent retry sees it and gets 409; it is completed with
# the response afterwards, and replayed for the same key and body. Scoped per caller (the API key id).
idempotency_keys = sa.Table(
    "idempotency_keys", metadata,
    sa.Column("caller", sa.Text, primary_key=True),
    sa.Column("idempotency_key", sa.Text, primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False, comment="sha256 of method, path and body"),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("response_status", sa.Integer),
    sa.Column("response_headers", JSONB),
    sa.Column("response_body", sa.LargeBinary),
    created_at(),
    sa.Column("locked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("status IN ('in_flight', 'completed')", name="status"),
)
sa.Index("ix_idempotency_keys_created_at", idempotency_keys.c.created_at)

# Stripe webhook events already translated (Stripe delivers at least once and retries on non-2xx).
stripe_webhook_events = sa.Table(
    "stripe_webhook_events", metadata,
    sa.Column("stripe_event_id", sa.Text, primary_key=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("published", sa.Boolean, nullable=False, server_default=sa.false()),
    created_at(),
)

# Usage events whose customer was unknown when they arrived, parked until the customer exists.
# NOTE: the edge parks them (here and on usage.unmatched.v1 for consumers that want the stream) rather
# than refusing them: a producer that reports usage before onboarding finished must not lose revenue.
unmatched_usage = sa.Table(
    "unmatched_usage", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("customer_ref", sa.Text, nullable=False, index=True, comment="the id the producer sent"),
    sa.Column("transaction_id", sa.Text, nullable=False),
    sa.Column("event", JSONB, nullable=False),
    sa.Column("submitted_by", sa.Text, nullable=False),
    created_at(),
    sa.Column("replayed_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("customer_ref", "transaction_id"),
)

# Who did what, when, with which key. Append-only: never updated or deleted.
audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("customer_id", sa.Text, index=True),
    sa.Column("subscription_id", sa.Text),
    sa.Column("actor_key_id", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text),
    sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
)

# Which subscription ids the edge has minted for which customer, so usage can be routed (key =
# subscription_id) and reads can be authorised before the worker has applied the subscribe command.
# NOTE: this is routing, not subscription state: status, plan and periods live in the worker's tables.
subscription_routes = sa.Table(
    "subscription_routes", metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.customer_id"), nullable=False, index=True),
    sa.Column("command_id", sa.Uuid, nullable=False),
    created_at(),
)
