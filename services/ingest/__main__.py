"""`python -m services.ingest`: serve the edge with uvicorn on settings.http_host:http_port.

Processes: `BILLING_HTTP_WORKERS` (settings.http_workers, default 1) uvicorn worker processes share the
port, each with its own app, connection pool and Kafka producers (`services.ingest.app:app_from_environment`
builds them from the environment in each worker). The edge is stateless, so more processes only add
throughput: one per core on a machine of its own (`BILLING_HTTP_WORKERS=2` on a 2-core box roughly
doubles `POST /v1/ingest` throughput, which is CPU-bound in Python), and 1 in a Kubernetes pod, where the
HorizontalPodAutoscaler adds pods instead.
"""

from __future__ import annotations

import uvicorn

from services.ingest.app import create_app
from services.ingest.bootstrap import build_container
from shared.config import Settings
from shared.observability import configure_logging
from shared.runtime import freeze_startup_heap


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    if settings.http_workers > 1:
        uvicorn.run("services.ingest.app:app_from_environment", factory=True, workers=settings.http_workers,
                    host=settings.http_host, port=settings.http_port, log_config=None, access_log=False)
        return
    app = create_app(build_container(settings))
    freeze_startup_heap()
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
