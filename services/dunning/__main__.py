"""`python -m services.dunning`: run the dunning service (faust worker) with settings from BILLING_*."""

from __future__ import annotations

import logging

import faust

from shared.config import Settings
from shared.observability import configure_logging
from shared.runtime import freeze_startup_heap

from .app import create_app
from .bootstrap import bootstrap
from .outages import RepeatedClientErrors


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatedClientErrors())  # a broker outage is one line a minute, not thousands
    app = create_app(bootstrap(settings))
    worker = faust.Worker(app, loglevel=settings.log_level, override_logging=False, quiet=True)
    freeze_startup_heap()
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
