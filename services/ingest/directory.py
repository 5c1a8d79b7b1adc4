"""Customer resolution for usage: our id or an ingest alias -> customer -> the subscription usage goes to.

Reads the edge's `customers`/`customer_aliases` and the worker's `subscriptions` read model; results are
cached briefly per process, because a batch of 1000 events usually names a handful of customers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

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
            rows = conn.execute(_RESOLVE, {"refs": sorted(refs)}).all()
        return {row.ref: Route(row.customer_id, row.subscription_id, row.plan_id, row.status) for row in rows}


# One round trip for a whole batch's references, with the array as one parameter (an expanding IN of
# hundreds of values costs more to compile than to run). An alias wins over a customer id of the same
# text; the newest live (not cancelled) subscription is the one usage goes to.
_RESOLVE: Final = sa.text(f"""
    SELECT r.ref, COALESCE(a.customer_id, c.customer_id) AS customer_id,
           s.subscription_id, s.plan_id, s.status
    FROM unnest(CAST(:refs AS text[])) AS r(ref)
    LEFT JOIN {customers.name} c ON c.customer_id = r.ref
    LEFT JOIN {customer_aliases.name} a ON a.alias = r.ref
    LEFT JOIN LATERAL (
        SELECT subscription_id, plan_id, status FROM {subscriptions.name}
        WHERE customer_id = COALESCE(a.customer_id, c.customer_id) AND status <> 'cancelled'
        ORDER BY created_at DESC LIMIT 1) s ON true
""")
