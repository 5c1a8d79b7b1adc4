"""Customer resolution for usage: our id or an ingest alias -> customer -> the subscription usage goes to.

Reads the edge's `customers`/`customer_aliases` and the worker's `subscriptions` read model; results are
cached briefly per process, because a batch of 1000 events usually names a handful of customers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customer_aliases, customers

# NOTE: a plan change or a new subscription reaches usage routing within this many seconds.
CACHE_TTL_SECONDS = 2.0
USAGE_STATUSES = ("trialing", "active", "past_due")


@dataclass(frozen=True)
class Route:
    """Where one customer reference leads. `customer_id` None: nobody by that id or alias."""

    customer_id: str | None
    subscription_id: str | None = None
    plan_id: str | None = None
    status: str | None = None


class CustomerDirectory:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._cache: dict[str, tuple[float, Route]] = {}
        self._lock = threading.Lock()

    def resolve(self, refs: Iterable[str]) -> dict[str, Route]:
        now = time.monotonic()
        wanted = set(refs)
        found: dict[str, Route] = {}
        with self._lock:
            for ref in wanted:
                hit = self._cache.get(ref)
                if hit is not None and hit[0] > now:
                    found[ref] = hit[1]
        missing = wanted - found.keys()
        if missing:
            fresh = self._load(missing)
            with self._lock:
                if len(self._cache) > 100_000:
                    self._cache.clear()
                for ref, route in fresh.items():
                    self._cache[ref] = (now + CACHE_TTL_SECONDS, route)
            found.update(fresh)
        return found

    def forget(self, *refs: str) -> None:
        with self._lock:
            for ref in refs:
                self._cache.pop(ref, None)

    def _load(self, refs: set[str]) -> dict[str, Route]:
        with self._engine.connect() as conn:
            ids = {r.customer_id: r.customer_id for r in conn.execute(
                sa.select(customers.c.customer_id).where(customers.c.customer_id.in_(refs)))}
            ids.update({r.alias: r.customer_id for r in conn.execute(
                sa.select(customer_aliases.c.alias, customer_aliases.c.customer_id)
                .where(customer_aliases.c.alias.in_(refs)))})
            live: dict[str, sa.Row[tuple[str, str, str, str]]] = {}
            if ids:
                rows = conn.execute(
                    sa.select(subscriptions.c.customer_id, subscriptions.c.subscription_id,
                              subscriptions.c.plan_id, subscriptions.c.status)
                    .where(subscriptions.c.customer_id.in_(set(ids.values())),
                           subscriptions.c.status != "cancelled")
                    .order_by(subscriptions.c.created_at))
                for row in rows:  # the newest live subscription wins
                    live[row.customer_id] = row
        routes: dict[str, Route] = {}
        for ref in refs:
            customer_id = ids.get(ref)
            sub = live.get(customer_id) if customer_id else None
            routes[ref] = Route(customer_id, sub.subscription_id if sub else None, sub.plan_id if sub else None,
                                sub.status if sub else None)
        return routes
