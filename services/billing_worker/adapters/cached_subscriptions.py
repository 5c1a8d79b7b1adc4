"""A set of subscription ids read from PostgreSQL and cached for a few seconds: the usage path's hooks
(auto-recharge, alerts) check each record's key against it, so a batch touching none of those subscriptions costs
a set lookup per record and no query. Keys are bytes, as the usage records carry them."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa


class CachedSubscriptionSet:
    """The ids `query` selects, read again at most every `refresh_seconds` (a setting stored a moment ago is
    seen by the next refresh)."""

    def __init__(self, query: sa.TextClause, *, refresh_seconds: float = 5.0) -> None:
        self._query = query
        self._refresh_seconds = refresh_seconds
        self._ids: frozenset[bytes] = frozenset()
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def current(self, conn: sa.Connection) -> frozenset[bytes]:
        with self._lock:
            if time.monotonic() - self._loaded_at >= self._refresh_seconds:
                self._ids = frozenset(s.encode() for s in conn.execute(self._query).scalars())
                self._loaded_at = time.monotonic()
            return self._ids
