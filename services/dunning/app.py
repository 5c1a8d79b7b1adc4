"""The faust-streaming app of the dunning service, built by a factory (nothing connects at import).

Agents are thin: decode the envelope, call ``DunningHandlers.handle`` in a worker thread, done. Timers run
the schedule on the billing clock, deliver decided notifications and reconcile with the provider (unknown
payment outcomes, then open invoices it may have been paid for).
Faust tables are not used: all state is in PostgreSQL (see the package docstring for the guarantees).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any, Final

import faust
from faust.types import EventT, StreamT

from shared.contracts import topics
from shared.contracts.envelope import Envelope, EnvelopeError
from shared.errors import DeliveryError
from shared.observability import kv

from .bootstrap import DunningContainer
from .outages import OutageMonitor, is_outage

log = logging.getLogger("billing.dunning.app")

MAX_ATTEMPTS_FOR_UNCLASSIFIED_ERRORS: Final = 5
MAX_BACKOFF_S: Final = 30.0


def faust_broker_url(bootstrap: str) -> str:
    """``host1:9092,host2:9092`` -> ``kafka://host1:9092;kafka://host2:9092``."""
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def create_app(container: DunningContainer) -> faust.App:
    settings = container.settings
    app_id = f"{settings.topic_prefix}dunning"
    app = faust.App(
        app_id,
        broker=faust_broker_url(settings.kafka_bootstrap),
        store="memory://",
        autodiscover=False,
        # The web server is for readiness probes (/readyz), so it runs only when a port is configured.
        web_enabled=settings.dunning_web_port is not None,
        web_port=settings.dunning_web_port or 6066,
        web_bind="0.0.0.0",  # a probe comes from outside the pod
        topic_allow_declare=False,  # topics are provisioned (deploy/topics.yaml), never auto-created
        topic_disable_leader=True,  # no leader election needed: timers share work through row locks
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        # A killed instance's partitions move to a live one after the session timeout (faust: 60 s).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        datadir=str(Path(tempfile.gettempdir()) / f"billing-dunning-{app_id}"),  # faust insists on one
    )
    billing_events = app.topic(settings.topic(topics.BILLING_EVENTS), key_serializer="raw",
                               value_serializer="raw")
    dead_letters = app.topic(settings.topic(topics.dlq(topics.BILLING_EVENTS)), key_serializer="raw",
                             value_serializer="raw")
    monitor = OutageMonitor()
    consumer = _EventConsumer(container, dead_letters, monitor)

    @app.agent(billing_events, name="dunning-billing-events")
    async def on_billing_event(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            await consumer.consume(event)

    @app.timer(interval=settings.scheduler_interval_s, name="dunning-schedule")  # type: ignore[untyped-decorator]
    async def run_schedule() -> None:
        await _periodic(monitor, "schedule", lambda: asyncio.to_thread(container.handlers.run_due))

    @app.timer(interval=settings.scheduler_interval_s, name="dunning-notifications")  # type: ignore[untyped-decorator]
    async def deliver_notifications() -> None:
        await _periodic(monitor, "notifications", container.dispatcher.deliver_due)

    @app.timer(interval=max(settings.scheduler_interval_s, 5.0), name="dunning-reconciliation")  # type: ignore[untyped-decorator]
    async def reconcile_payments() -> None:
        # Unknown attempts first (a retry waits on them), then open invoices paid without our hearing.
        await _periodic(monitor, "reconciliation", lambda: asyncio.to_thread(container.reconciler.run))

    if settings.dunning_web_port is not None:
        @app.page("/readyz")
        async def readyz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            return _readiness(web, monitor)

    return app


def _readiness(web: faust.web.View, monitor: OutageMonitor) -> faust.web.Response:
    """200 while every job works; 503 naming each job that waits out an outage or keeps failing."""
    troubles = monitor.troubles()
    if troubles:
        return web.json({"status": "unavailable", "jobs": troubles}, status=503)
    return web.json({"status": "ready"})


async def _periodic(monitor: OutageMonitor, name: str, job: Any) -> None:
    """Run one tick. A failure never ends the timer (faust would crash the whole app): the job is retried
    with backoff, outages quietly (one line when it starts, one when it is over), anything else loudly.
    Every job is idempotent (row locks, unique action keys, leases), so a retried tick repeats nothing."""
    if not monitor.may_run(name):
        return
    try:
        await job()
    except Exception as exc:
        monitor.failed(name, exc)
    else:
        monitor.succeeded(name)


class _EventConsumer:
    """Decode -> handle -> done, with the error policy: an outage (database or broker down) retries the same
    event with backoff for as long as it lasts (the offset does not move: nothing acknowledged is lost);
    terminal errors go to the DLQ with the reason in headers; an unclassified error is retried a few times,
    then dead-lettered. Nothing is dropped."""

    JOB: Final = "billing-events"

    def __init__(self, container: DunningContainer, dead_letters: faust.TopicT, monitor: OutageMonitor) -> None:
        self._handlers = container.handlers
        self._dead_letters = dead_letters
        self._monitor = monitor

    async def consume(self, event: EventT[Any]) -> None:
        message = event.message
        source = f"{message.topic}/{message.partition}/{message.offset}"
        unclassified_failures = 0
        while True:
            try:
                envelope = Envelope.from_bytes(event.value)
                await asyncio.to_thread(self._handlers.handle, envelope, source=source)
                self._monitor.succeeded(self.JOB)
                return
            except EnvelopeError as exc:
                await self._dead_letter(event, source, exc)
                return
            except Exception as exc:
                if is_outage(exc):
                    await asyncio.sleep(self._monitor.failed(self.JOB, exc))
                    continue
                if getattr(exc, "retryable", None) is False:
                    await self._dead_letter(event, source, exc)
                    return
                unclassified_failures += 1
                if unclassified_failures >= MAX_ATTEMPTS_FOR_UNCLASSIFIED_ERRORS:
                    log.exception("event keeps failing; dead-lettered", extra=kv(source=source))
                    await self._dead_letter(event, source, exc)
                    return
                backoff = min(MAX_BACKOFF_S, 0.2 * 2 ** unclassified_failures)
                log.warning("event failed; retrying", extra=kv(source=source, error=f"{type(exc).__name__}: {exc}",
                                                               backoff_s=backoff))
                await asyncio.sleep(backoff)

    async def _dead_letter(self, event: EventT[Any], source: str, error: BaseException) -> None:
        """Park the event in the DLQ; the offset moves on only once Kafka has it (retried through a broker
        outage, since acknowledging an event that is in neither place would lose it)."""
        message = event.message
        headers = [*(message.headers or []),
                   ("dlq.error", f"{type(error).__name__}: {error}"[:1000].encode()),
                   ("dlq.source", source.encode()), ("dlq.consumer", b"dunning")]
        while True:
            try:
                delivery = await self._dead_letters.send(key=message.key, value=event.value, headers=headers)
                await delivery
            except Exception as exc:
                await asyncio.sleep(self._monitor.failed(
                    "dead-letters", DeliveryError(f"Kafka did not take the dead letter: {exc}")))
                continue
            self._monitor.succeeded("dead-letters")
            log.error("dead-lettered", extra=kv(source=source, error=str(error)[:500]))
            return
