"""Builds the quota service from the edge's container (called by the quota router's lifespan).

The quota hot path uses its own async psycopg pool: a decision is one read and one conditional write per
batch, and an async driver keeps those off the thread pool the rest of the edge uses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.ingest.container import Container
from services.ingest.metrics import EdgeMetrics
from services.ingest.quota_service import QuotaService
from shared.adapters.notify.factory import build_notifier
from shared.adapters.postgres.quota_repository import QuotaRepository, make_pool

POOL_MIN = 2
POOL_MAX = 16


async def build_quota_service(container: Container, metrics: EdgeMetrics | None = None
                              ) -> tuple[QuotaService, Callable[[], Awaitable[None]]]:
    """An opened quota service and the coroutine function that closes it (metrics recorded on ``metrics``).

    Nothing stays open when building fails half-way: an exception after the pool opened closes it again
    (a lifespan that fails never runs its shutdown, so the caller could not).
    """
    notifier = build_notifier(container.settings)
    pool = make_pool(container.settings, min_size=POOL_MIN, max_size=POOL_MAX)
    try:
        await pool.open(wait=True)
        service = QuotaService(QuotaRepository(pool), container.clock, container.catalog, notifier, metrics)
    except BaseException:
        await pool.close()
        await notifier.aclose()
        raise

    async def close() -> None:
        await service.aclose()
        await notifier.aclose()
        await pool.close()

    return service, close
