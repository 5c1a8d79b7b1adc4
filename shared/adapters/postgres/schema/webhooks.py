"""Tables of outgoing webhooks (services/webhooks delivers, the edge registers endpoints).

Once-only guarantees are constraints, not checks:
- `webhook_deliveries (endpoint_id, event_id)`: one delivery per endpoint and billing event, so a replay of
  billing-events.v1 (the fan-out consumes at least once) adds nothing;
- `webhook_delivery_attempts (delivery_id, attempt_no)`: the append-only log of every HTTP attempt.
An endpoint is never deleted (deliveries refer to it): `DELETE /v1/webhook-endpoints/{id}` disables it.
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from .base import created_at, metadata

DELIVERY_STATUSES = ("pending", "delivered", "abandoned")
DISABLED_REASONS = ("api", "failing")

webhook_endpoints = sa.Table(
    "webhook_endpoints", metadata,
    sa.Column("endpoint_id", sa.Text, primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("events", JSONB, nullable=False, comment='public event names, or ["*"] for all'),
    sa.Column("description", sa.Text),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("disabled_reason", sa.Text, comment="api: disabled by a caller; failing: failed for 3 days"),
    sa.Column("secret", sa.Text, nullable=False,
              comment="the HMAC key (whsec_...): kept in clear because signing needs it; shown once by the API"),
    sa.Column("secret_rotated_at", sa.DateTime(timezone=True)),
    sa.Column("previous_secret", sa.Text, comment="still signs (beside the new one) until the instant below"),
    sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), comment="billing-clock instant"),
    sa.Column("failing_since", sa.DateTime(timezone=True),
              comment="billing-clock instant of the first failed attempt since the last success"),
    sa.Column("created_by", sa.Text, nullable=False),
    created_at(),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("url ~ '^https?://'", name="url"),
    sa.CheckConstraint(f"disabled_reason IS NULL OR disabled_reason IN {DISABLED_REASONS!r}",
                       name="disabled_reason"),
)

# One row per (endpoint, billing event) the endpoint subscribes to. `seq` orders a subscription's events
# (the fan-out inserts them in the partition's order); a later one waits while an earlier one to the same
# endpoint with the same `ordering_key` is pending.
webhook_deliveries = sa.Table(
    "webhook_deliveries", metadata,
    sa.Column("delivery_id", UUID(as_uuid=True), primary_key=True, comment="uuid5(endpoint, event)"),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),
    sa.Column("endpoint_id", sa.Text, sa.ForeignKey("webhook_endpoints.endpoint_id"), nullable=False),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, comment="the billing event's id, sent as `id`"),
    sa.Column("event_type", sa.Text, nullable=False, comment="public name (shared/contracts/webhook_events.py)"),
    sa.Column("ordering_key", sa.Text, nullable=False, comment="the Kafka key: subscription (or org) id"),
    sa.Column("body", JSONB, nullable=False, comment="{id, type, created, data}: the bytes are signed at send"),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False, comment="billing-clock instant"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, comment="billing-clock instant"),
    sa.Column("first_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("last_status_code", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("redeliver_requested_at", sa.DateTime(timezone=True),
              comment="a manual redelivery asked for: one more attempt, outside the ordering rule"),
    sa.Column("leased_until", sa.DateTime(timezone=True),
              comment="wall clock: a dispatcher is sending it; another may take it after this"),
    created_at(),
    sa.UniqueConstraint("endpoint_id", "event_id"),
    sa.CheckConstraint(f"status IN {DELIVERY_STATUSES!r}", name="status"),
    sa.CheckConstraint("attempts >= 0", name="attempts"),
)
sa.Index("ix_webhook_deliveries_due", webhook_deliveries.c.next_attempt_at,
         postgresql_where=webhook_deliveries.c.status == "pending")
sa.Index("ix_webhook_deliveries_order", webhook_deliveries.c.endpoint_id, webhook_deliveries.c.ordering_key,
         webhook_deliveries.c.seq, postgresql_where=webhook_deliveries.c.status == "pending")
sa.Index("ix_webhook_deliveries_log", webhook_deliveries.c.endpoint_id, webhook_deliveries.c.seq)
sa.Index("ix_webhook_deliveries_redeliver", webhook_deliveries.c.redeliver_requested_at,
         postgresql_where=webhook_deliveries.c.redeliver_requested_at.isnot(None))

# Append-only: every HTTP attempt of a delivery, automatic or manual.
webhook_delivery_attempts = sa.Table(
    "webhook_delivery_attempts", metadata,
    sa.Column("attempt_id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("delivery_id", UUID(as_uuid=True), sa.ForeignKey("webhook_deliveries.delivery_id"), nullable=False),
    sa.Column("attempt_no", sa.Integer, nullable=False),
    sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False, comment="billing-clock instant"),
    sa.Column("manual", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("succeeded", sa.Boolean, nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    created_at(),
    sa.UniqueConstraint("delivery_id", "attempt_no"),
)

# Notices to the operator about endpoints (today: disabled after failing every attempt for 3 days).
webhook_endpoint_notices = sa.Table(
    "webhook_endpoint_notices", metadata,
    sa.Column("notice_id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("endpoint_id", sa.Text, sa.ForeignKey("webhook_endpoints.endpoint_id"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("abandoned_deliveries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, comment="billing-clock instant"),
    created_at(),
    sa.CheckConstraint("kind IN ('endpoint_disabled')", name="kind"),
)
