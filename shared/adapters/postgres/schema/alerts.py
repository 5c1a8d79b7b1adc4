"""Spend and low-credit alerts of a subscription (issue 15, item 5): its settings, and the alerts fired.

`fired_alerts` is the once-only guard: one row per (subscription, period_start, kind, meter, threshold), written
with its billing event in one transaction (`INSERT ... ON CONFLICT DO NOTHING`), so replayed or concurrent
batches that all see a crossing announce it once; a new period (another period_start) re-arms every alert.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from .base import created_at, metadata

ALERT_KINDS = ("spend", "low_credit")

subscription_alerts = sa.Table(
    "subscription_alerts", metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("spend_thresholds_minor", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("low_credit_balance_minor", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

fired_alerts = sa.Table(
    "fired_alerts", metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("period_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("meter_id", sa.Text, primary_key=True, server_default=""),  # '' for a spend alert
    sa.Column("threshold_minor", sa.BigInteger, primary_key=True),
    sa.Column("observed_minor", sa.BigInteger, nullable=False),  # the spend, or the credit left
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("event_id", sa.Uuid, nullable=False, unique=True),
    sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
    created_at(),
    sa.CheckConstraint(f"kind IN {ALERT_KINDS}", name="kind"),
)

# Metronome's threshold notifications (issue 16, `/metronome/v1/alerts/*`): each watches one customer's live
# subscription; the enabled ones of a subscription are what its `subscription_alerts` row holds (rewritten
# from them, in the same transaction, at every create and archive), so the worker evaluates them as above.
mx_alerts = sa.Table(
    "mx_alerts", metadata,
    sa.Column("alert_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False, index=True),
    sa.Column("subscription_id", sa.Text, nullable=False, index=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("alert_type", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # our alert kind: spend | low_credit
    sa.Column("meter_id", sa.Text, nullable=False, server_default=""),  # '' for a spend alert
    sa.Column("threshold_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("uniqueness_key", sa.Text, unique=True),
    sa.Column("status", sa.Text, nullable=False, server_default="enabled"),
    created_at(),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint(f"kind IN {ALERT_KINDS}", name="kind"),
    sa.CheckConstraint("status IN ('enabled', 'archived')", name="status"),
)
