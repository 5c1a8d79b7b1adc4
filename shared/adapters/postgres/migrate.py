"""Apply Alembic migrations programmatically (the provisioner, the services and the tests call this)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str, schema: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["schema"] = schema
    return cfg


def upgrade(database_url: str, schema: str | None = None, revision: str = "head") -> None:
    """Bring the database (or one schema of it) to `revision`; creates the schema if missing."""
    if schema:
        engine = sa.create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        engine.dispose()
    command.upgrade(alembic_config(database_url, schema), revision)


def drop_schema(database_url: str, schema: str, lock_timeout: str = "20s") -> bool:
    """Drop a (test or benchmark) schema; gives up after `lock_timeout` if a leaked connection still holds a
    lock in it, so a teardown can never hang a run (a leftover uniquely named schema is harmless)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{lock_timeout}'"))
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()
