"""`python -m services.ingest`: serve the edge with uvicorn on settings.http_host:http_port."""

from __future__ import annotations

import uvicorn

from services.ingest.app import create_app
from services.ingest.bootstrap import build_container
from shared.config import Settings
from shared.observability import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    container = build_container(settings)
    uvicorn.run(create_app(container), host=settings.http_host, port=settings.http_port,
                log_config=None, access_log=False)


if __name__ == "__main__":
    main()
