"""Engine construction from settings (psycopg 3 driver, optional per-schema search_path)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shared.config import Settings


def make_engine(settings: Settings, *, pool_size: int | None = None, work_mem_mb: int | None = None,
                **kwargs: Any) -> sa.Engine:
    """An engine on the settings' database and schema; `work_mem_mb` sets the sessions' memory per sort or hash
    (PostgreSQL's default, 4 MB, is the server's unless given)."""
    connect_args = settings.sqlalchemy_connect_args
    if work_mem_mb is not None:
        connect_args = {**connect_args, "options": f"{connect_args['options']} -cwork_mem={work_mem_mb}MB"}
    return sa.create_engine(
        settings.database_url,
        connect_args=connect_args,
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=10,
        pool_pre_ping=True,
        **kwargs,
    )
