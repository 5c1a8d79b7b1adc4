"""`python -m services.billing_worker`: run one billing-worker instance until SIGTERM / SIGINT.

Configuration comes from BILLING_* (shared.config.Settings). Options of this one process:
  --member-id ID          Kafka static membership: a restart with the same id resumes its partitions at once
  --session-timeout-ms N  how soon a silent instance loses its partitions (default: librdkafka's 45 s)
  --no-relay              do not run the outbox relay in this process
"""

from __future__ import annotations

import argparse
import signal
import threading


def main(argv: list[str] | None = None) -> None:
    # Handlers first: a SIGTERM that arrives while the heavy modules below are still importing (a rollout
    # that stops a pod at once) must end the process cleanly, not kill it with the default action.
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from services.billing_worker.bootstrap import build_worker_when_reachable
    from shared.config import Settings
    from shared.observability import configure_logging
    from shared.runtime import collect_for_batches, freeze_startup_heap

    parser = argparse.ArgumentParser(prog="python -m services.billing_worker")
    parser.add_argument("--member-id", default=None)
    parser.add_argument("--session-timeout-ms", type=int, default=None)
    parser.add_argument("--no-relay", action="store_true")
    args = parser.parse_args(argv)

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    if stop.is_set():
        return
    # Flags override the BILLING_WORKER_* settings (handy for running several instances from one shell).
    worker = build_worker_when_reachable(
        settings, stop, relay=settings.worker_relay and not args.no_relay,
        static_member_id=args.member_id or settings.worker_member_id,
        session_timeout_ms=args.session_timeout_ms or settings.worker_session_timeout_ms)
    if worker is None:  # stopped while waiting for the database
        return
    freeze_startup_heap()
    collect_for_batches()
    worker.run(stop)


if __name__ == "__main__":
    main()
