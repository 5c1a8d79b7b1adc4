"""Customer resolution for usage: our id or an ingest alias -> customer -> the subscription usage goes to.

Reads the edge's `customers`/`customer_aliases` and the worker's `subscriptions` read model; results are
cached briefly per process, because a batch of 1000 events usually names a handful of customers, and the
last answers keep being served while PostgreSQL is down (`services.ingest.last_known`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from services.ingest.last_known import LastKnownCache
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.core import customer_aliases, customers
from shared.adapters.postgres.subscription_reads import newest_live_subscription

# NOTE: a plan change or a new subscription reaches usage routing within this many seconds.
CACHE_TTL_SECONDS = 2.0


@dataclass(frozen=True)
class Route:
    """Where one customer reference leads. `customer_id` None: nobody by that id or alias."""

    customer_id: str | None
    subscription_id: str | None = None
    plan_id: str | None = None
    status: str | None = None


class CustomerDirectory:
    """Resolves customer references, cached per process (`LastKnownCache`: while PostgreSQL is down, routes
    read in the last `STALE_FOR_SECONDS` are still served; an unknown reference is then an outage error)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._cache: LastKnownCache[str, Route] = LastKnownCache("customer-directory", CACHE_TTL_SECONDS)

    def resolve(self, refs: Iterable[str]) -> dict[str, Route]:
        return self._cache.get_many(refs, self._load)

    def forget(self, *refs: str) -> None:
        if refs:
            self._cache.forget(*refs)

    def _load(self, refs: set[str]) -> dict[str, Route]:
        with self._engine.connect() as conn:
            rows = conn.execute(_RESOLVE, {"refs": sorted(refs)}).all()
        return {row.ref: Route(row.customer_id, row.subscription_id, row.plan_id, row.status) for row in rows}


# One round trip for a whole batch's references, with the array as one parameter (an expanding IN of
# hundreds of values costs more to compile than to run). An alias wins over a customer id of the same
# text; usage goes to the customer's newest live subscription (`subscription_reads`, the one definition).
_REFS: Final = sa.func.unnest(sa.bindparam("refs", type_=ARRAY(sa.Text))).table_valued("ref").render_derived("r")
_OWNER: Final = sa.func.coalesce(customer_aliases.c.customer_id, customers.c.customer_id)
_NEWEST: Final = newest_live_subscription(
    _OWNER, subscriptions.c.subscription_id, subscriptions.c.plan_id, subscriptions.c.status).lateral("s")
_RESOLVE: Final = (
    sa.select(_REFS.c.ref, _OWNER.label("customer_id"), _NEWEST.c.subscription_id, _NEWEST.c.plan_id,
              _NEWEST.c.status)
    .select_from(_REFS.outerjoin(customers, customers.c.customer_id == _REFS.c.ref)
                 .outerjoin(customer_aliases, customer_aliases.c.alias == _REFS.c.ref)
                 .outerjoin(_NEWEST, sa.true())))
