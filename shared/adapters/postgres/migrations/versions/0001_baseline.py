"""Baseline schema.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-22

NOTE: until the first tagged release, the schema is one baseline created from the SQLAlchemy metadata
(shared/adapters/postgres/schema). From the first release on, every change is a new, hand-reviewed
revision and this file is frozen (docs/architecture.md, "Trade-offs").
"""
from alembic import op

from shared.adapters.postgres.schema import metadata

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    metadata.create_all(bind=op.get_bind())


def downgrade() -> None:
    metadata.drop_all(bind=op.get_bind())
