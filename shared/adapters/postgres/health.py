"""Does PostgreSQL answer? A probe on a fresh connection (never a pooled one, which may be stuck or be the
very session at fault), for readiness endpoints and for telling an outage from a message at fault."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.pool import NullPool


class DatabaseProbe:
    def __init__(self, url: str | sa.URL, *, timeout_s: float = 3.0) -> None:
        seconds = max(1, round(timeout_s))
        self._engine = sa.create_engine(url, poolclass=NullPool, connect_args={
            "connect_timeout": seconds, "options": f"-c statement_timeout={seconds * 1000}"})

    def answers(self) -> bool:
        """True when a new session can be opened and runs ``SELECT 1``."""
        try:
            with self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:  # any failure to answer is the answer
            return False

    def close(self) -> None:
        self._engine.dispose()
