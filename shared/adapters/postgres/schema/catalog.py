"""Tables of the catalog managed through the API (and imported from the YAML bootstrap files).

Each entry is stored as the catalog document it was validated from (the same mapping a YAML file holds,
in JSON), so the YAML loader's rules (`shared.domain.catalog`) are the only validation, and an export
writes back what was imported.
- `catalog_plan_versions (plan_id, version)`: immutable versions; a plan's `current_version` is what new
  subscriptions get; `content_hash` lets an import of unchanged files add nothing.
- Nothing a subscription or an invoice may refer to is deleted: `archived_at` instead.
- `catalog_revision`: one row, bumped by every change (the providers' caches compare it), and locked by
  every writer so concurrent imports and API writes are serialised.
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from .base import created_at, metadata

catalog_revision = sa.Table(
    "catalog_revision", metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("id = 1", name="single_row"),
)

catalog_meters = sa.Table(
    "catalog_meters", metadata,
    sa.Column("meter_id", sa.Text, primary_key=True),
    sa.Column("document", JSONB, nullable=False, comment="the meter as a catalog document holds it"),
    sa.Column("content_hash", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    created_at(),
    sa.Column("archived_at", sa.DateTime(timezone=True)),
)

catalog_plans = sa.Table(
    "catalog_plans", metadata,
    sa.Column("plan_id", sa.Text, primary_key=True),
    sa.Column("current_version", sa.Integer, nullable=False),
    created_at(),
    sa.Column("archived_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("current_version >= 1", name="current_version"),
)

catalog_plan_versions = sa.Table(
    "catalog_plan_versions", metadata,
    sa.Column("plan_id", sa.Text, sa.ForeignKey("catalog_plans.plan_id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", JSONB, nullable=False, comment="the plan as a catalog document holds it"),
    sa.Column("content_hash", sa.Text, nullable=False),
    created_at(),
    sa.CheckConstraint("version >= 1", name="version"),
)

catalog_coupons = sa.Table(
    "catalog_coupons", metadata,
    sa.Column("coupon_id", sa.Text, primary_key=True),
    sa.Column("document", JSONB, nullable=False, comment="the coupon as a catalog document holds it"),
    sa.Column("content_hash", sa.Text, nullable=False),
    created_at(),
    sa.Column("archived_at", sa.DateTime(timezone=True)),
)
