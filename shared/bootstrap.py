"""The factories every service's composition root shares: which adapter the settings ask for, written once.

Each service has one composition root (`services/<name>/bootstrap.py`) that builds settings and adapters
once per process and passes them down; these functions are what they have in common. Only composition
roots (and the CLI, tests and tools standing in for one) call them. Nothing here connects: an engine's
pool connects on first use, the simulated clock reads its row on first `now()` unless asked to `ensure` it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa

from shared.adapters.clock import DatabaseClock, SystemClock
from shared.adapters.notify.log import LogNotifier
from shared.adapters.notify.port import Notifier
from shared.adapters.notify.smtp import SmtpNotifier
from shared.adapters.notify.webhook import WebhookNotifier
from shared.adapters.payments.port import PaymentGateway
from shared.adapters.postgres.engine import make_engine
from shared.config import Settings
from shared.domain.clock import Clock

SimulatedClockFactory = Callable[[sa.Engine, datetime], DatabaseClock]


def build_engine(settings: Settings, *, pool_size: int | None = None) -> sa.Engine:
    """The service's SQLAlchemy engine: its connection pool holds `pool_size` connections
    (BILLING_DATABASE_POOL_SIZE when None), each waiting at most BILLING_DATABASE_CONNECT_TIMEOUT_S to
    connect. The edge's asynchronous quota pool is opened with the app (`services.ingest.quota_wiring`)."""
    return make_engine(settings, pool_size=pool_size)


def build_clock(settings: Settings, engine: sa.Engine, *, simulated: SimulatedClockFactory = DatabaseClock,
                ensure: bool = False) -> Clock:
    """The billing clock (BILLING_CLOCK): the system clock, or the simulated one every process of an
    environment shares through PostgreSQL, starting at BILLING_SIMULATED_CLOCK_START.

    `simulated` builds the simulated clock (the edge passes one that serves its last reading through a
    PostgreSQL outage); `ensure` creates its row now, so a process that must not start without the database
    (the billing worker) fails at start rather than on its first tick.
    """
    if settings.clock != "simulated":
        return SystemClock()
    clock = simulated(engine, datetime.fromisoformat(settings.simulated_clock_start))
    if ensure:
        clock.ensure()
    return clock


def build_gateway(settings: Settings, engine: sa.Engine | None = None) -> PaymentGateway:
    """The payment provider (BILLING_PAYMENT_GATEWAY): Stripe, or the simulated provider. The simulated one
    keeps its record in PostgreSQL when an engine is given (it then outlives the process, like a real
    provider), else in memory."""
    if settings.payment_gateway == "stripe":
        from shared.adapters.payments.stripe_gateway import StripeGateway, make_stripe_client

        return StripeGateway(make_stripe_client(settings.stripe_api_key.get_secret_value(),
                                                settings.stripe_api_base))
    from shared.adapters.payments.simulated import (
        InMemoryProviderRecord,
        PostgresProviderRecord,
        SimulatedGateway,
    )

    return SimulatedGateway(PostgresProviderRecord(engine) if engine is not None else InMemoryProviderRecord(),
                            rate_limit_per_s=settings.simulated_gateway_rate_limit_per_s or None)


def build_paced_gateway(settings: Settings, engine: sa.Engine | None = None) -> PaymentGateway:
    """The gateway of a process that charges (the worker's payment and refund executors): `build_gateway`'s,
    paced at this process's share of the provider's rate limit, its 429s retried with back-off
    (`shared.adapters.payments.rate_limit`). Unpaced when BILLING_PAYMENT_RATE_LIMIT_PER_S is 0."""
    from shared.adapters.payments.rate_limit import RateLimitedGateway, client_bucket

    gateway = build_gateway(settings, engine)
    if not settings.payment_rate_limit_per_s:
        return gateway
    share = settings.payment_rate_limit_per_s / settings.payment_executor_processes
    calls = getattr(gateway, "calls_for_charge", None)
    return RateLimitedGateway(gateway, client_bucket(share),
                              calls_for_charge=calls if callable(calls) else (lambda _request: 2))


def build_notifier(settings: Settings) -> Notifier:
    """The notification channel (BILLING_NOTIFIER): the log, a signed webhook, or SMTP."""
    if settings.notifier == "webhook":
        if not settings.notify_webhook_url:
            raise ValueError("BILLING_NOTIFIER=webhook needs BILLING_NOTIFY_WEBHOOK_URL")
        return WebhookNotifier(settings.notify_webhook_url, settings.notify_webhook_secret.get_secret_value())
    if settings.notifier == "smtp":
        return SmtpNotifier(settings.smtp_host, settings.smtp_port, settings.smtp_sender)
    return LogNotifier()
