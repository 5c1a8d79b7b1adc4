"""Builds the report-quota use cases from the edge's container (called by the quota router's lifespan).

The quota hot path uses its own async psycopg pool: a decision is one read and one conditional write per
batch, and an async driver keeps those off the thread pool the rest of the edge uses. Spend authorisations
write through it too. Connections the
server ended (a PostgreSQL restart) are dropped at checkout, so the pool recovers with the server.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from services.ingest.container import Container
from services.ingest.metrics import EdgeMetrics
from services.ingest.service_layer.quota_admin import QuotaAdmin, QuotaService
from services.ingest.service_layer.quota_admission import QuotaAdmission
from services.ingest.service_layer.quota_alerts import AlertNotifications
from services.ingest.service_layer.quota_commit import BatchCommitter, EventLoopClock
from services.ingest.service_layer.quota_group_commit import GroupCommit
from services.ingest.service_layer.quota_leases import LeasedCredits
from services.ingest.service_layer.quota_ports import OrgBatchStore, QuotaStorePort
from services.ingest.service_layer.spend import SpendService
from shared.adapters.postgres.pool import make_pool
from shared.adapters.postgres.quota_lease_store import LeaseStore
from shared.adapters.postgres.quota_store import QuotaStore
from shared.adapters.postgres.spend_store import SpendWrites
from shared.bootstrap import build_notifier
from shared.domain.catalog import Catalog
from shared.domain.clock import Clock

REPORT_METER = "reports"

POOL_MIN = 2
POOL_MAX = 16
# NOTE: while PostgreSQL is down the pool has no connection to give; a request waits this long for one
# and is then answered 503 (psycopg_pool's default, 30 s, held every quota request that long).
POOL_WAIT_SECONDS = 3.0


async def drop_if_closed_by_server(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's checkout check: refuse an idle connection the server has already closed or written to.

    # NOTE: after a PostgreSQL restart every pooled connection is dead, and each used to fail one request
    # with a 503 before the pool dropped it. An idle connection has nothing to read unless the server ended
    # it (a fast shutdown sends 57P01, then EOF), so a zero-timeout poll of its socket finds those without
    # the round trip of psycopg_pool's own `check_connection` on the hot path.
    """
    if not conn.closed and not conn.broken and not select.select([conn.pgconn.socket], [], [], 0)[0]:
        return
    await conn.close()  # closed, it is discarded when the pool takes it back (an open one would be reused)
    raise psycopg.OperationalError("the server ended this idle connection")


async def build_quota_service(container: Container, metrics: EdgeMetrics | None = None,
                              spend: SpendService | None = None
                              ) -> tuple[QuotaService, Callable[[], Awaitable[None]]]:
    """The opened quota use cases and the coroutine function that closes them (metrics recorded on ``metrics``);
    ``spend``'s authorisation writes go through the same pool until then (``SpendService.write_through``).

    Nothing stays open when building fails half-way: an exception after the pool opened closes it again
    (a lifespan that fails never runs its shutdown, so the caller could not).
    """
    notifier = build_notifier(container.settings)
    pool = make_pool(container.settings, min_size=POOL_MIN, max_size=POOL_MAX, timeout=POOL_WAIT_SECONDS,
                     check=drop_if_closed_by_server)
    try:
        await pool.open(wait=True)
        store = QuotaStore(pool)
        group = GroupCommit(store) if container.settings.quota_group_commit else None
        lease_store = LeaseStore(pool)
        service = quota_service(store, container.clock, container.catalog, AlertNotifications(notifier),
                                metrics, current_catalog=container.current_catalog, batch_store=group,
                                revoke_leases=lease_store.revoke)
        if container.settings.quota_leases:
            admission = service.admission
            admission.leases = LeasedCredits(
                lease_store, admission.committer, admission.clock, admission.alerts,
                container.catalog.meter(REPORT_METER).event_type, lease_seconds=container.settings.quota_lease_seconds,
                min_rate=container.settings.quota_lease_min_rate)
        if spend is not None:
            spend.write_through(SpendWrites(pool))
        warm = (asyncio.ensure_future(spend.keep_warm(container.settings.spend_keep_warm_seconds))
                if spend is not None and container.settings.spend_keep_warm_seconds > 0 else None)
    except BaseException:
        await pool.close()
        await notifier.aclose()
        raise

    async def close() -> None:
        if warm is not None:
            warm.cancel()
            await asyncio.gather(warm, return_exceptions=True)
        if spend is not None:
            spend.write_through(None)
        await service.admission.aclose()
        if group is not None:
            await group.aclose()
        await notifier.aclose()
        await pool.close()

    return service, close


def quota_service(store: QuotaStorePort, clock: Clock, catalog: Catalog, alerts: AlertNotifications,
                  metrics: EdgeMetrics | None = None, *,
                  current_catalog: Callable[[], Catalog] | None = None,
                  batch_store: OrgBatchStore | None = None,
                  revoke_leases: Callable[[str], Awaitable[int]] | None = None) -> QuotaService:
    """The report quota's use cases over ``store`` (the unit tests pass an in-memory store); batches are
    read and committed through ``batch_store`` when given (the cross-org group commit over ``store``)."""
    metrics = metrics or EdgeMetrics()
    loop_clock = EventLoopClock(clock)
    batch_seconds = metrics.quota_batch_seconds
    committer = BatchCommitter(batch_store or store, loop_clock,
                               lambda path, seconds: batch_seconds.labels(path).observe(seconds))
    admission = QuotaAdmission(committer, loop_clock, alerts, catalog.meter(REPORT_METER).event_type,
                               metrics.quota_batch_size.observe, revoke_leases=revoke_leases)
    return QuotaService(admission, QuotaAdmin(store, loop_clock, catalog, committer, current_catalog))
