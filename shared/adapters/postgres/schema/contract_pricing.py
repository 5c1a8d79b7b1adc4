"""Metronome's contract pricing and contracts, kept beside our catalog (issue 16).

- `mx_products`, `mx_rate_cards`, `mx_rates`: what the Metronome-compatible surface was told (products,
  rate cards, rates with their start). They are not billed from: a contract's terms are turned into a plan of
  our catalog (content-addressed id, `plan_id` below), and the worker bills that plan.
- `mx_contracts`: a contract is one subscription (`subscription_id`, unique) plus its terms as Metronome
  wrote them (normalised JSON: the subscription entry, recurring credits, overrides), the plan they made and
  the edits applied. `uniqueness_key` is unique per customer (Metronome's 409 on a repeated key).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from .base import created_at, metadata

PRODUCT_TYPES = ("FIXED", "USAGE", "COMPOSITE", "SUBSCRIPTION", "PROFESSIONAL_SERVICE", "PRO_SERVICE")

mx_products = sa.Table(
    "mx_products", metadata,
    sa.Column("product_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("billable_metric_id", sa.Text),
    sa.Column("tags", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("custom_fields", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),  # list order, cursor key
    created_at(),
    sa.Column("archived_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint(f"type IN {PRODUCT_TYPES}", name="type"),
)

mx_rate_cards = sa.Table(
    "mx_rate_cards", metadata,
    sa.Column("rate_card_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("aliases", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("custom_fields", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),
    created_at(),
    sa.Column("archived_at", sa.DateTime(timezone=True)),
)

mx_rates = sa.Table(
    "mx_rates", metadata,
    sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("rate_card_id", sa.Text, sa.ForeignKey("mx_rate_cards.rate_card_id"), nullable=False, index=True),
    sa.Column("product_id", sa.Text, sa.ForeignKey("mx_products.product_id"), nullable=False),
    sa.Column("starting_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ending_before", sa.DateTime(timezone=True)),
    sa.Column("entitled", sa.Boolean, nullable=False),
    sa.Column("rate", JSONB, nullable=False, comment="rate_type, price (cents), tiers, billing_frequency"),
    created_at(),
)

mx_contracts = sa.Table(
    "mx_contracts", metadata,
    sa.Column("contract_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False, index=True),
    sa.Column("subscription_id", sa.Text, nullable=False, unique=True),
    sa.Column("rate_card_id", sa.Text, sa.ForeignKey("mx_rate_cards.rate_card_id"), nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("starting_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ending_before", sa.DateTime(timezone=True)),
    sa.Column("terms", JSONB, nullable=False, comment="subscription, recurring_credits, overrides (normalised)"),
    sa.Column("plan_id", sa.Text, nullable=False, comment="the catalog plan the terms made"),
    sa.Column("edits", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("uniqueness_key", sa.Text),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),
    created_at(),
    sa.Column("archived_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("customer_id", "uniqueness_key", name="uq_mx_contracts_uniqueness"),
)

mx_credit_grants = sa.Table(
    "mx_credit_grants", metadata,
    sa.Column("grant_id", sa.Text, primary_key=True, comment="credit_grants.grant_id of the grant it names"),
    sa.Column("customer_id", sa.Text, nullable=False, index=True),
    sa.Column("product_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("credit_grant_type", sa.Text),
    sa.Column("custom_fields", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("uniqueness_key", sa.Text),
    created_at(),
    sa.UniqueConstraint("customer_id", "uniqueness_key", name="uq_mx_credit_grants_uniqueness"),
)
