"""Composition root of the dunning service: settings in, wired objects out. Nothing connects here;
connections open when the faust worker starts and the first transaction runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from shared.adapters.notify.port import Notifier
from shared.adapters.payments.port import PaymentGateway
from shared.bootstrap import build_clock, build_engine, build_gateway, build_notifier
from shared.config import Settings
from shared.domain.clock import Clock
from shared.domain.dunning import DunningPolicy

from .dispatch import NotificationDispatcher
from .handlers import DunningHandlers
from .reconciliation import PaymentAttemptReader, PaymentReconciler
from .repository import PostgresDunningStore, PostgresNotificationQueue


@dataclass(frozen=True)
class DunningContainer:
    settings: Settings
    engine: sa.Engine
    clock: Clock
    handlers: DunningHandlers
    dispatcher: NotificationDispatcher
    reconciler: PaymentReconciler
    notifier: Notifier


def policy_from_settings(settings: Settings) -> DunningPolicy:
    """The campaign schedule from BILLING_DUNNING_* (the domain validates it: offsets before the give-up day)."""
    return DunningPolicy(retry_offsets_days=settings.dunning_retry_days,
                         notify_offsets_days=settings.dunning_notify_days,
                         give_up_after_days=settings.dunning_give_up_day)


def bootstrap(settings: Settings, *, policy: DunningPolicy | None = None, clock: Clock | None = None,
              notifier: Notifier | None = None, gateway: PaymentGateway | None = None) -> DunningContainer:
    # NOTE: the schedule comes from BILLING_DUNNING_*, whose defaults are the domain's DunningPolicy
    # (retries on days 3/5/7, reminders 1/3/7, give up on day 14); tests may pass another.
    policy = policy or policy_from_settings(settings)
    engine = build_engine(settings, pool_size=5)
    clock = clock or build_clock(settings, engine)
    notifier = notifier or build_notifier(settings)
    reader = PaymentAttemptReader()
    handlers = DunningHandlers(PostgresDunningStore(engine, policy, reader), clock, policy=policy,
                               channel=notifier.channel)
    dispatcher = NotificationDispatcher(PostgresNotificationQueue(engine), notifier)
    reconciler = PaymentReconciler(engine, gateway or build_gateway(settings, engine), clock, reader,
                                   timedelta(days=settings.dunning_reconcile_uncollectible_days))
    return DunningContainer(settings=settings, engine=engine, clock=clock, handlers=handlers,
                            dispatcher=dispatcher, reconciler=reconciler, notifier=notifier)
