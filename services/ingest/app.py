"""The FastAPI application of the ingest edge: `create_app(container)`.

Middleware order (outermost first): metrics, outage answers (503 for an outage a middleware hit),
body-size limit (413), JSON depth guard (422), NUL-character guard (422), card-number guard (422),
Idempotency-Key (POST), then the routes. Errors are problem+json
(`services.ingest.problems`). The Kafka producer's delivery thread, the edge's outbox relay and the
report-quota service (its async PostgreSQL pool) start with the app; they are flushed and closed when it
stops. The services one app shares between requests are built once, by the composition root
(`services.ingest.bootstrap`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from services.ingest import openapi as api_document
from services.ingest.body_guard import MAX_JSON_DEPTH, DepthGuardMiddleware
from services.ingest.bootstrap import build_container, build_edge_services
from services.ingest.console import pages as console_pages
from services.ingest.container import Container
from services.ingest.idempotency import IdempotencyMiddleware, IdempotencyStore
from services.ingest.limits import BodyLimitMiddleware
from services.ingest.metrics import MetricsMiddleware
from services.ingest.nul import NulGuardMiddleware
from services.ingest.pan import PanGuardMiddleware
from services.ingest.problems import MetronomeProblemMiddleware, OutageMiddleware, install_problem_handlers
from services.ingest.quota_fast_path import QuotaFastPath
from services.ingest.quota_wiring import build_quota_service
from services.ingest.relay import build_relay
from services.ingest.routes import (
    alerts,
    api_keys,
    catalog,
    clock,
    credit_notes,
    credits,
    customers,
    documents,
    drafts,
    health,
    ingest,
    invoice_lines,
    invoices,
    notifications,
    previews,
    reads,
    subscriptions,
    webhook_endpoints,
    webhooks,
)
from services.ingest.routes import metronome as metronome_routes
from services.ingest.routes import portal as portal_routes
from services.ingest.routes import quota as quota_routes
from shared.config import Settings
from shared.observability import configure_logging
from shared.runtime import freeze_startup_heap
from shared.sdk.events import UsageEvent

_log = logging.getLogger("services.ingest")
WEBHOOK_PATH = "/v1/webhooks/stripe"
INGEST_PATH = "/v1/ingest"
METRONOME_INGEST_PATH = "/metronome/v1/ingest"
PURGE_INTERVAL_SECONDS = 3600.0

DESCRIPTION = """\
The HTTP edge of the billing engine. It authenticates and validates, publishes usage and lifecycle
commands to Kafka (acknowledged only after Kafka acknowledged), and answers reads from PostgreSQL.

* **Authentication**: `Authorization: Bearer <api key>` (or `X-API-Key`). Scopes: `ingest`, `read`, `admin`.
* **Errors**: `application/problem+json` with `type`, `title`, `status`, `detail` and `errors[{field, reason}]`.
* **Idempotency**: send `Idempotency-Key` on any POST; a retry with the same key and body replays the first
  response, a different body gets 422, a retry while the first is in flight gets 409. Kept >= 24 h.
* **Pagination**: list endpoints take `limit` and `cursor` and return `next_cursor` (null on the last page).
"""


def create_app(container: Container) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container.producer.start()
        relay = build_relay(container)
        relay.start()
        purger = asyncio.create_task(_purge_idempotency_keys(store))
        close_quota: Callable[[], Awaitable[None]] | None = None
        try:
            if getattr(app.state, "quota", None) is None:  # unless a test installed one
                # opened with the app: its async pool belongs to the event loop that serves the requests
                app.state.quota, close_quota = await build_quota_service(container, edge.metrics, edge.spend)
            yield
        finally:
            if close_quota is not None:
                app.state.quota = None
                await close_quota()
            purger.cancel()
            await run_in_threadpool(relay.stop)
            await run_in_threadpool(container.producer.flush, 10.0)
            await run_in_threadpool(container.usage_producer.close, 10.0)

    app = FastAPI(title="Billing engine: ingest edge", version="1.0.0", description=DESCRIPTION,
                  lifespan=lifespan, docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json")
    edge = build_edge_services(container)
    store = edge.idempotency
    # Routes and middlewares find these on app.state (one per app, built by the composition root).
    app.state.container = container
    app.state.authenticator = edge.authenticator
    app.state.metrics = edge.metrics
    app.state.directory = edge.directory
    app.state.spend = edge.spend
    app.state.console = edge.console
    install_problem_handlers(app)

    for module in _route_modules():
        app.include_router(module.router)

    _document_raw_bodies(app)

    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(IdempotencyMiddleware, store=store, exempt_paths=frozenset({WEBHOOK_PATH}))
    # answered per event / verified on the raw bytes
    raw_bodies = frozenset({WEBHOOK_PATH, INGEST_PATH, METRONOME_INGEST_PATH})
    app.add_middleware(PanGuardMiddleware, exempt_paths=raw_bodies)
    app.add_middleware(NulGuardMiddleware, exempt_paths=raw_bodies)
    app.add_middleware(DepthGuardMiddleware, max_depth=MAX_JSON_DEPTH, exempt_paths=raw_bodies)
    app.add_middleware(BodyLimitMiddleware, max_bytes=container.settings.max_request_bytes)
    app.add_middleware(OutageMiddleware)
    app.add_middleware(MetronomeProblemMiddleware)  # the SDK's error shape under /metronome
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # the decision endpoints' common request, answered ahead of all the above (issue 18; hands on the rest)
    app.add_middleware(QuotaFastPath, state=app.state, exception_handlers=app.exception_handlers,
                       authenticator=edge.authenticator, metrics=app.state.metrics,
                       max_body_bytes=container.settings.max_request_bytes)
    return app


def app_from_environment() -> FastAPI:
    """The app of one uvicorn worker process (`BILLING_HTTP_WORKERS` > 1): settings from the environment.
    Only `python -m services.ingest` calls it, once per worker process, so it may freeze the startup heap."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    app = create_app(build_container(settings))
    freeze_startup_heap()
    return app


def _route_modules() -> list:  # type: ignore[type-arg]
    # NOTE: the hot paths first (usage ingest, report credits): routing tries the routers in this order,
    # and matching through every other router cost ~30 % of a report-credit request's CPU.
    return [ingest, quota_routes, health, api_keys, customers, subscriptions, reads, documents, notifications,
            webhooks, clock, invoice_lines, previews, drafts, credit_notes, invoices,
            webhook_endpoints, credits, catalog, alerts, metronome_routes, console_pages, portal_routes]


def _document_raw_bodies(app: FastAPI) -> None:
    """Routes that parse their body themselves (per-event results) reference schemas FastAPI cannot see;
    the statuses every operation can answer are declared by `services.ingest.openapi`."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            schema.setdefault("components", {}).setdefault("schemas", {})["UsageEvent"] = \
                UsageEvent.model_json_schema(ref_template="#/components/schemas/{model}")
            api_document.complete(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


async def _purge_idempotency_keys(store: IdempotencyStore) -> None:
    while True:
        try:
            purged = await run_in_threadpool(store.purge_expired)
            if purged:
                _log.info("purged expired idempotency keys", extra={"count": purged})
        except Exception:  # a failed purge is retried next hour; serving goes on
            _log.warning("idempotency key purge failed", exc_info=True)
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)
