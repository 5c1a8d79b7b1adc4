"""Engine construction from settings (psycopg 3 driver, optional per-schema search_path)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shared.config import Settings


def make_engine(settings: Settings, *, pool_size: int | None = None, **kwargs: Any) -> sa.Engine:
    return sa.create_engine(
        settings.database_url,
        connect_args=settings.sqlalchemy_connect_args,
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=10,
        pool_pre_ping=True,
        **kwargs,
    )
