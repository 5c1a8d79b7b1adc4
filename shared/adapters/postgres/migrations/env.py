"""Alembic environment: runs online against the URL (and optional schema) set by migrate.py."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from shared.adapters.postgres.schema import metadata

config = context.config
schema = config.attributes.get("schema")
connect_args = {"options": f"-csearch_path={schema}"} if schema else {}
engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", connect_args=connect_args,
                          poolclass=sa.pool.NullPool)

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata,
                      version_table_schema=schema, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
