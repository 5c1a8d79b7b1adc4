"""Composition root of the billing worker: settings in, a runnable Worker out. Nothing connects at import.

The worker process runs the exactly-once consumer loop on the main thread and, beside it, the outbox
relay and the background tasks (payment executor, scheduler). The handler table (message type -> use case) is
written out below, `billing_handlers`: a type without a handler is a dead letter, and a table naming a type
the contracts do not know fails at start.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from services.billing_worker.adapters.alert_hints import AlertHints, chained
from services.billing_worker.adapters.recharge_hints import RechargeHints
from services.billing_worker.adapters.sql_unit_of_work import SqlBillingUnitOfWork
from services.billing_worker.adapters.usage import MeterMap, UsageMaterializer
from services.billing_worker.adapters.usage_close import close_usages
from services.billing_worker.entrypoints.consumer import ExactlyOnceConsumer
from services.billing_worker.entrypoints.executor import PaymentExecutor
from services.billing_worker.entrypoints.health import HealthServer
from services.billing_worker.entrypoints.refunds import RefundExecutor
from services.billing_worker.entrypoints.scheduler import Scheduler
from services.billing_worker.service_layer.handlers import (
    Handler,
    credit_notes,
    credit_purchases,
    credits,
    customers,
    drafts,
    invoices,
    payments,
    periods,
    scheduled_changes,
    subscriptions,
)
from services.billing_worker.service_layer.messagebus import BatchProcessor, MessageBus, UnitOfWorkFactory
from services.billing_worker.service_layer.model import credit_kinds
from shared.adapters.catalog_file import load_catalog
from shared.adapters.kafka.dlq import DeadLetterPublisher
from shared.adapters.kafka.health import KafkaProbe
from shared.adapters.kafka.outbox_relay import OutboxRelay
from shared.adapters.kafka.producer import KafkaProducer
from shared.adapters.postgres.catalog_store import CatalogProvider
from shared.adapters.postgres.engine import make_engine
from shared.adapters.postgres.errors import describe
from shared.adapters.postgres.health import DatabaseProbe
from shared.adapters.retry_policy import is_retryable
from shared.bootstrap import build_clock, build_paced_gateway
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.messages import PAYLOADS
from shared.domain.catalog import Catalog
from shared.domain.clock import Clock
from shared.observability import kv

log = logging.getLogger("billing_worker")

CONSUMED_TOPICS = (topics.COMMANDS, topics.USAGE, topics.PAYMENTS)
COMMIT_LANES = 3
PREFETCH_KBYTES = 16384


def billing_handlers() -> dict[str, Handler]:
    """Every command (commands.v1) and payment outcome (payments.v1) the worker applies, and its use case."""
    return {
        "subscription.create": subscriptions.CREATE,
        "subscription.change_plan": subscriptions.CHANGE_PLAN,
        "subscription.change_seats": subscriptions.CHANGE_SEATS,
        "subscription.cancel": subscriptions.CANCEL,
        "subscription.pause": subscriptions.PAUSE,
        "subscription.resume": subscriptions.RESUME,
        "subscription.cancel_scheduled_change": scheduled_changes.CANCEL_SCHEDULED_CHANGE,
        "subscription.revoke_cancellation": scheduled_changes.REVOKE_CANCELLATION,
        "trial.end": subscriptions.END_TRIAL,
        "period.close": periods.CLOSE_PERIOD,
        "invoice.finalize": drafts.FINALIZE_INVOICE,
        "credits.expire": credits.EXPIRE,
        "credits.grant": credits.GRANT,
        "credits.void_grant": credits.VOID_GRANT,
        "credits.purchase": credit_purchases.PURCHASE,
        "credits.check_recharge": credit_purchases.CHECK_RECHARGE,
        "payment.retry": payments.RETRY,
        "payment_method.update": payments.UPDATE_PAYMENT_METHOD,
        "dunning.give_up": payments.GIVE_UP,
        "payment.succeeded": payments.SUCCEEDED,
        "payment.failed": payments.FAILED,
        "payment.customer_deleted": customers.CUSTOMER_DELETED,
        "credit_note.issue": credit_notes.ISSUE,
        "invoice.void": invoices.VOID,
        "invoice.mark_uncollectible": invoices.MARK_UNCOLLECTIBLE,
        "invoice.create_one_off": invoices.CREATE_ONE_OFF,
    }


def message_bus(handlers: Mapping[str, Handler]) -> MessageBus:
    """The bus over `handlers`; a type the contracts do not define (a typo) fails here, at start."""
    unknown = sorted(set(handlers) - set(PAYLOADS))
    if unknown:
        raise ValueError(f"handlers for message types the contracts do not define: {unknown}")
    return MessageBus(handlers)


def sql_unit_of_work(catalog: Catalog) -> UnitOfWorkFactory:
    """A unit of work over the batch's connection, for each batch the consumer applies."""
    kinds = credit_kinds(catalog)

    def start(conn: sa.Connection) -> SqlBillingUnitOfWork:
        return SqlBillingUnitOfWork(conn, catalog, close_usages, kinds)
    return start


def live_sql_unit_of_work(provider: CatalogProvider, materializer: UsageMaterializer) -> UnitOfWorkFactory:
    """`sql_unit_of_work` over the stored catalog: each batch gets the provider's snapshot, compared with
    the stored revision on the batch's own connection, so a plan or meter created through the API is known
    to the next batch; the materializer decodes a new meter's events from then on."""
    seen: dict[str, tuple[Catalog, dict[str, bool]]] = {}

    def start(conn: sa.Connection) -> SqlBillingUnitOfWork:
        catalog = provider.current(conn)
        last = seen.get("catalog")
        if last is None or last[0] is not catalog:
            materializer.use_meters(MeterMap.from_catalog(catalog))
            last = seen["catalog"] = (catalog, credit_kinds(catalog))
        return SqlBillingUnitOfWork(conn, catalog, close_usages, last[1])
    return start


class BackgroundTask(Protocol):
    """A service that runs beside the consumer loop in the worker process (executor, scheduler)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def make_clock(settings: Settings, engine: sa.Engine) -> Clock:
    return build_clock(settings, engine, ensure=True)


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Worker:
    settings: Settings
    engine: sa.Engine
    consumer: ExactlyOnceConsumer
    relay: OutboxRelay | None
    bus: MessageBus
    background: Sequence[BackgroundTask]
    materializer: UsageMaterializer
    instance: str
    health: HealthServer | None = None
    dead_letters: DeadLetterPublisher | None = None

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set: the current batch finishes or rolls back, then everything closes."""
        log.info("billing worker starting", extra=kv(instance=self.instance, group=self.settings.consumer_group,
                                                     handled=sorted(self.bus.handled_types())))
        if self.health is not None:
            self.health.start()
        if self.relay is not None:
            self.relay.start()
        for task in self.background:
            task.start()
        try:
            self.consumer.run(stop)
        finally:
            for task in reversed(self.background):
                task.stop()
            if self.relay is not None:
                self.relay.stop()
            if self.health is not None:
                self.health.stop()
            if self.dead_letters is not None:  # its librdkafka threads would keep calling a gone broker
                self.dead_letters.close()
            self.engine.dispose()
            log.info("billing worker stopped", extra=kv(instance=self.instance, **vars(self.consumer.stats)))


# NOTE: a billing run's batch bundles its outbox messages by subscription (5,000 closes: 20,000 envelopes of
# ~500 bytes sorted by key) and the relay's rounds sort a round's messages (2,000 bundles: 8,000); at
# PostgreSQL's default of 4 MB both sorts spilled to disk (auto_explain, 10k run). Per sort, not per session,
# and only as much as a sort uses.
WORK_MEM_MB = 64


def build_worker(settings: Settings, *, handlers: Mapping[str, Handler] | None = None,
                 background: bool = True, relay: bool = True, static_member_id: str | None = None,
                 session_timeout_ms: int | None = None, commit_lanes: int = COMMIT_LANES) -> Worker:
    """Build a worker. `handlers` replaces the billing handler table (tests: `{}` applies usage only);
    `background=False` runs no payment executor and no scheduler. `static_member_id` sets Kafka static
    membership (group.instance.id): a restarted instance with the same id takes its partitions back at once
    instead of waiting for a rebalance."""
    engine = make_engine(settings, work_mem_mb=WORK_MEM_MB)
    clock = make_clock(settings, engine)
    catalog = load_catalog(sorted(settings.catalog_dir.glob("*.yaml")))
    bus = message_bus(billing_handlers() if handlers is None else handlers)
    tasks: list[BackgroundTask] = []
    if background:
        gateway = build_paced_gateway(settings, engine)
        executor = PaymentExecutor(engine, gateway, clock, concurrency=settings.payment_concurrency)
        tasks = [executor, Scheduler(settings, engine, clock),
                 RefundExecutor(engine, gateway, clock)]
    materializer = UsageMaterializer(MeterMap.from_catalog(catalog), clock)
    me = instance_id()
    dlq = DeadLetterPublisher(KafkaProducer(settings, client_id=f"{me}-dlq"))
    # NOTE: librdkafka prefetches up to 64 MB by default; 16 MB is over half a second of usage at 50,000
    # events/s, enough to keep the commit lanes fed, and it is most of the worker's resident memory saved.
    overrides: dict[str, object] = {"queued.max.messages.kbytes": PREFETCH_KBYTES}
    if static_member_id:
        overrides["group.instance.id"] = static_member_id
    if session_timeout_ms:
        overrides["session.timeout.ms"] = session_timeout_ms
        overrides["heartbeat.interval.ms"] = max(100, session_timeout_ms // 5)
    provider = CatalogProvider(engine, catalog, refresh_seconds=0)
    alert_hints = AlertHints(provider.current, refresh_seconds=settings.auto_recharge_refresh_s)
    processor = BatchProcessor(bus, live_sql_unit_of_work(provider, materializer),
                               materializer, clock, after_usage=chained(RechargeHints(
                                   provider.current, refresh_seconds=settings.auto_recharge_refresh_s),
                                   alert_hints), after_closes=alert_hints.after_closes)
    consumer = ExactlyOnceConsumer(settings, engine, processor, dlq,
                                   topics=CONSUMED_TOPICS, instance_id=me, consumer_overrides=overrides,
                                   commit_lanes=commit_lanes)
    outbox_relay = OutboxRelay(engine, KafkaProducer(settings, client_id=f"{me}-relay")) if relay else None
    return Worker(settings, engine, consumer, outbox_relay, bus, tasks, materializer, me, build_health(settings),
                  dlq)


def build_worker_when_reachable(settings: Settings, stop: threading.Event, **options: Any) -> Worker | None:
    """`build_worker`, waiting (capped backoff) while PostgreSQL is out: building reads the simulated clock,
    and a worker started during an outage must come up by itself when the database does. None if `stop` is
    set meanwhile."""
    attempt = 0
    while not stop.is_set():
        try:
            return build_worker(settings, **options)
        except Exception as error:
            if not is_retryable(error):
                raise
            attempt += 1
            delay = min(5.0, 0.25 * 2 ** min(attempt, 5))
            log.warning("waiting for the database to start the worker", extra=kv(
                error=describe(error)[:300], error_class=type(error).__name__, attempt=attempt, delay_s=delay))
            stop.wait(delay)
    return None


def build_health(settings: Settings) -> HealthServer | None:
    """The /healthz and /readyz endpoint when BILLING_WORKER_HEALTH_PORT is set (0: any free port)."""
    if settings.worker_health_port is None:
        return None
    database = DatabaseProbe(settings.database_url, timeout_s=2.0)
    kafka = KafkaProbe(settings, timeout_s=2.0)
    return HealthServer(settings.worker_health_host, settings.worker_health_port,
                        {"postgres": database.answers, "kafka": kafka.answers}, on_close=database.close)

