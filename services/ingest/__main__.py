"""`python -m services.ingest`: serve the edge with uvicorn on settings.http_host:http_port.

Processes: `BILLING_HTTP_WORKERS` (settings.http_workers, default 1) uvicorn worker processes share the
port, each with its own app, connection pool and Kafka producers (`served_from_environment` builds them from
the environment in each worker). The edge is stateless, so more processes only add
throughput: one per core on a machine of its own (`BILLING_HTTP_WORKERS=2` on a 2-core box roughly
doubles `POST /v1/ingest` throughput, which is CPU-bound in Python), and 1 in a Kubernetes pod, where the
HorizontalPodAutoscaler adds pods instead.

What is served is the app behind the decision endpoints' fast path (`quota_fast_path.ahead_of`: the
report-credit and spend-authorisation requests it answers skip FastAPI's own layers), on uvloop and
httptools, named explicitly so that a missing one fails at start instead of silently serving on the slower
pure-Python loop and parser; the httptools protocol is `http_protocol`'s, which sends each response's head
and body in one write.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from services.ingest.app import app_from_environment, create_app
from services.ingest.bootstrap import build_container
from services.ingest.http_protocol import OneWriteHttpToolsProtocol
from services.ingest.quota_fast_path import ahead_of
from shared.config import Settings
from shared.observability import configure_logging
from shared.runtime import freeze_startup_heap

SERVER_OPTIONS: dict[str, Any] = {"loop": "uvloop", "http": OneWriteHttpToolsProtocol, "log_config": None,
                                  "access_log": False}


def frozen_after_startup(app: Any) -> Any:
    """``app`` with the heap frozen again once its lifespan has started (`shared.runtime`).

    # NOTE: what the routers' lifespans build (the quota pool and its use cases, Kafka producers, catalogs)
    # is long-lived too, but it did not exist yet when the entrypoint froze the heap before serving, so every
    # full collection walked it again; one such collection, 42 ms on a loaded box, landed inside the quota
    # benchmark's 6 s p99 window: a pause of every request in flight, ~1 % of that window's requests.
    """
    async def served(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                freeze_startup_heap()
            await send(message)

        await app(scope, receive, sending)

    return served


def served_from_environment() -> Any:
    """What one uvicorn worker process serves (`BILLING_HTTP_WORKERS` > 1): the app from the environment
    (`app.app_from_environment`) behind the fast path."""
    app = app_from_environment()
    return frozen_after_startup(ahead_of(app, max_body_bytes=app.state.container.settings.max_request_bytes))


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    if settings.http_workers > 1:
        uvicorn.run("services.ingest.__main__:served_from_environment", factory=True, workers=settings.http_workers,
                    host=settings.http_host, port=settings.http_port, **SERVER_OPTIONS)
        return
    app = create_app(build_container(settings))
    served = frozen_after_startup(ahead_of(app, max_body_bytes=settings.max_request_bytes))
    freeze_startup_heap()
    uvicorn.run(served, host=settings.http_host, port=settings.http_port, **SERVER_OPTIONS)


if __name__ == "__main__":
    main()
