"""Read-through caches that keep serving what they last read while PostgreSQL is down.

The edge's hot reads (API keys, customer -> subscription routes) are cached briefly per process anyway;
during a database outage an entry that has expired is still served for `STALE_FOR_SECONDS` after it was
read, so producers the edge already knows keep getting their usage to Kafka. What was never read (a new
key, an unknown customer) cannot be answered from memory and raises the outage error (a 503).

Staleness is the price: during an outage a key revoked in the last `STALE_FOR_SECONDS` before it may keep
working and a customer's usage follows the subscription it had when last read (revocation and plan
changes need PostgreSQL anyway, so nothing can change meanwhile; what changed just before the outage is
the exposure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from datetime import datetime, timedelta
from typing import Final, Generic, TypeVar

import sqlalchemy as sa

from services.ingest.problems import OUTAGE_ERRORS, is_outage
from shared.adapters.clock import DatabaseClock
from shared.errors import DatabaseUnavailableError

# NOTE: how long after it was read an answer may still be served while PostgreSQL is down (15 minutes
# covers a restart or a fail-over; beyond that a 503 is the honest answer).
STALE_FOR_SECONDS: Final = 900.0
# After a failed look-up, requests answer from memory without trying PostgreSQL for this long, so an
# outage costs each request no connection attempt (a refused connect is fast; a black-holed one is not).
RETRY_AFTER_FAILURE_SECONDS: Final = 1.0

_log = logging.getLogger("services.ingest.last_known")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LastKnownCache(Generic[K, V]):
    """`get_many(keys, load)`: fresh entries from memory, the rest from `load` (one call for all of them);
    when `load` fails with an outage error, entries read less than `STALE_FOR_SECONDS` ago are served."""

    def __init__(self, name: str, ttl_seconds: float, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._name = name
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}  # key -> (read at, value)
        self._lock = threading.Lock()
        self._failed_until = 0.0

    def fresh(self, key: K) -> tuple[bool, V | None]:
        """(True, value) for an entry read less than the TTL ago; (False, None) otherwise. No I/O."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[0] + self._ttl > self._clock():
            return True, entry[1]
        return False, None

    def get_many(self, keys: Iterable[K], load: Callable[[set[K]], dict[K, V]]) -> dict[K, V]:
        now = self._clock()
        wanted = set(keys)
        found: dict[K, V] = {}
        with self._lock:
            for key in wanted:
                entry = self._entries.get(key)
                if entry is not None and entry[0] + self._ttl > now:
                    found[key] = entry[1]
        missing = wanted - found.keys()
        if not missing:
            return found
        if now < self._failed_until:
            return found | self._stale(missing, now, None)
        try:
            loaded = load(missing)
        except OUTAGE_ERRORS as error:
            if not is_outage(error):
                raise
            self._failed_until = now + RETRY_AFTER_FAILURE_SECONDS
            return found | self._stale(missing, now, error)
        with self._lock:
            if len(self._entries) > self._max_entries:
                self._entries.clear()
            for key, value in loaded.items():
                self._entries[key] = (now, value)
        return found | loaded

    def forget(self, *keys: K) -> None:
        with self._lock:
            if keys:
                for key in keys:
                    self._entries.pop(key, None)
            else:
                self._entries.clear()

    def _stale(self, keys: set[K], now: float, error: BaseException | None) -> dict[K, V]:
        with self._lock:
            entries = {key: self._entries.get(key) for key in keys}
        served = {key: entry[1] for key, entry in entries.items()
                  if entry is not None and entry[0] + STALE_FOR_SECONDS > now}
        if len(served) < len(keys):
            if error is not None:
                raise error
            raise DatabaseUnavailableError(f"{self._name}: PostgreSQL failed less than "
                                      f"{RETRY_AFTER_FAILURE_SECONDS} s ago; not asked again yet")
        if error is not None:
            _log.warning("PostgreSQL unavailable: serving what was last read", extra={
                "cache": self._name, "entries": len(served), "error": type(error).__name__})
        return served


class LastKnownDatabaseClock(DatabaseClock):
    """The simulated billing clock, read from PostgreSQL on every call as before; while PostgreSQL is down,
    the instant last read (for up to `STALE_FOR_SECONDS`). That is exact, not an approximation: the
    simulated clock only moves when advanced, and advancing needs PostgreSQL too. Without it usage ingest
    on a simulated clock (the demo, the fault suite) answered 503 through every outage."""

    def __init__(self, engine: sa.Engine, start: datetime, clock_id: str = "default",
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(engine, start, clock_id)
        self._monotonic = monotonic
        self._last: tuple[float, datetime] | None = None

    def now(self) -> datetime:
        try:
            value = super().now()
        except OUTAGE_ERRORS as error:
            last = self._last
            if not is_outage(error) or last is None or last[0] + STALE_FOR_SECONDS <= self._monotonic():
                raise
            return last[1]
        self._last = (self._monotonic(), value)
        return value

    def advance(self, delta: timedelta) -> datetime:
        value = super().advance(delta)
        self._last = (self._monotonic(), value)
        return value
