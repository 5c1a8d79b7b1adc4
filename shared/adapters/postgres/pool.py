"""The asynchronous psycopg pool of the edge's quota store (the rest of the services use SQLAlchemy engines,
``shared.adapters.postgres.engine``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.config import Settings


def psycopg_conninfo(settings: Settings) -> tuple[str, dict[str, Any]]:
    """A libpq conninfo and connection kwargs for ``settings.database_url`` (SQLAlchemy URL form)."""
    url = settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": settings.database_connect_timeout_s,
                              "options": settings.database_session_options}
    return url, kwargs


def make_pool(settings: Settings, *, min_size: int = 2, max_size: int = 10, timeout: float = 30.0,
              check: Callable[[Any], Awaitable[None]] | None = None) -> AsyncConnectionPool:
    """An unopened async pool (``await pool.open()`` in the app's lifespan; nothing connects at import);
    ``timeout``: the longest wait for a connection; ``check`` runs on every checkout (psycopg_pool)."""
    conninfo, kwargs = psycopg_conninfo(settings)
    return AsyncConnectionPool(conninfo, kwargs=kwargs, min_size=min_size, max_size=max_size, open=False,
                               timeout=timeout, check=check)
