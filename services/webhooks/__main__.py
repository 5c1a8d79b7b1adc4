"""`python -m services.webhooks`: fan billing events out to webhook endpoints and deliver them, until
SIGTERM / SIGINT. Configuration comes from BILLING_* (shared.config.Settings)."""

from __future__ import annotations

import signal
import threading


def main() -> None:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from services.webhooks.bootstrap import build_webhooks
    from shared.config import Settings
    from shared.observability import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    service = build_webhooks(settings)
    service.start(stop)
    stop.wait()
    service.join()


if __name__ == "__main__":
    main()
