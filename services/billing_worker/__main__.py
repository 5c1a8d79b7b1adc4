"""`python -m services.billing_worker`: run one billing-worker instance until SIGTERM / SIGINT."""

from __future__ import annotations

import signal
import threading

from services.billing_worker.bootstrap import build_worker
from shared.config import Settings
from shared.observability import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    build_worker(settings).run(stop)


if __name__ == "__main__":
    main()
