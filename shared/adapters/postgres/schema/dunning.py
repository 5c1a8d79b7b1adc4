"""Tables of the dunning area (owned by that area; registered on the shared metadata).

The dunning service keeps all of its state here, not in faust tables, so that every effect (a case
change, a scheduled action, the outgoing command in `outbox`, a notification to deliver) commits in one
PostgreSQL transaction together with the inbox row of the event that caused it.

Once-only guarantees are constraints, not checks:
- `dunning_inbox.event_id` (primary key): an incoming event is applied at most once;
- `dunning_actions (case_id, action_key)`: a retry, a notice or the give-up is carried out at most once
  per case, whatever restarts or concurrent timers do;
- `dunning_notifications (case_id, action_key)`: at most one notification per notice action, and its
  `notification_id` is the event id receivers dedupe on.
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from .base import created_at, metadata

CASE_STATUSES = ("open", "recovered", "given_up")
ACTION_KINDS = ("retry", "notify", "give_up")
NOTIFICATION_STATUSES = ("pending", "sent", "failed")

# One collection effort per unpaid invoice, from its first failed payment to its outcome. The facts the
# domain aggregate needs (failures, payment-method updates) are kept as JSON lists on the row; the
# carried-out actions are the rows of `dunning_actions`.
dunning_cases = sa.Table(
    "dunning_cases", metadata,
    sa.Column("case_id", sa.Text, primary_key=True),
    sa.Column("invoice_id", sa.Text, nullable=False, unique=True),
    sa.Column("subscription_id", sa.Text, nullable=False, index=True),
    sa.Column("customer_id", sa.Text, nullable=False, index=True),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False, comment="billing-clock instant"),
    sa.Column("status", sa.Text, nullable=False, server_default="open"),
    sa.Column("retries_suspended", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("failures", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb"),
              comment="[{at, hard, decline_code, attempt_no}] in the order recorded"),
    sa.Column("payment_method_updates", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("next_wake_at", sa.DateTime(timezone=True),
              comment="billing-clock instant the timer looks at the case again; NULL when closed"),
    sa.Column("closed_at", sa.DateTime(timezone=True)),
    sa.Column("closed_reason", sa.Text),
    created_at(),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint(f"status IN {CASE_STATUSES!r}", name="status"),
    sa.CheckConstraint("amount_minor >= 0", name="amount_minor"),
)
sa.Index("ix_dunning_cases_due", dunning_cases.c.next_wake_at,
         postgresql_where=dunning_cases.c.status == "open")

# Every action carried out for a case, once per key (`retry:3`, `notify:1`, `give_up`, ...). A retry or
# a give-up names the command it put in the outbox (`command_event_id`, deterministic from the key).
dunning_actions = sa.Table(
    "dunning_actions", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("case_id", sa.Text, sa.ForeignKey("dunning_cases.case_id"), nullable=False),
    sa.Column("action_key", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("carried_out_at", sa.DateTime(timezone=True), nullable=False, comment="billing-clock instant"),
    sa.Column("command_event_id", UUID(as_uuid=True), unique=True),
    created_at(),
    sa.UniqueConstraint("case_id", "action_key"),
    sa.CheckConstraint(f"kind IN {ACTION_KINDS!r}", name="kind"),
)

# The inbox: ids of incoming events already applied, written in the transaction of their effect.
dunning_inbox = sa.Table(
    "dunning_inbox", metadata,
    sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("source", sa.Text, comment="topic/partition/offset it was read at"),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# What was told to whom and when. Written (pending) in the transaction of the notice action, delivered
# after commit by the dispatcher through the configured Notifier, then marked sent (or failed).
dunning_notifications = sa.Table(
    "dunning_notifications", metadata,
    sa.Column("notification_id", UUID(as_uuid=True), primary_key=True,
              comment="deterministic per (case, action); the event id receivers dedupe on"),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True, comment="listing cursor"),
    sa.Column("case_id", sa.Text, sa.ForeignKey("dunning_cases.case_id"), nullable=False),
    sa.Column("action_key", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("invoice_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("recipient", sa.Text, comment="the customer's email when the notice was decided"),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("data", JSONB, nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False, comment="billing-clock instant"),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(),
              comment="wall clock; also the lease of the dispatcher that claimed it"),
    sa.Column("delivered_at", sa.DateTime(timezone=True), comment="wall clock"),
    sa.Column("last_error", sa.Text),
    created_at(),
    sa.UniqueConstraint("case_id", "action_key"),
    sa.CheckConstraint(f"status IN {NOTIFICATION_STATUSES!r}", name="status"),
)
sa.Index("ix_dunning_notifications_pending", dunning_notifications.c.next_attempt_at,
         postgresql_where=dunning_notifications.c.status == "pending")
sa.Index("ix_dunning_notifications_customer", dunning_notifications.c.customer_id, dunning_notifications.c.seq)
