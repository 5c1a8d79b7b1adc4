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
from shared.errors import InfrastructureError
from shared.observability import kv

from .bootstrap import DunningContainer

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
        web_enabled=False,
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
    consumer = _EventConsumer(container, dead_letters)

    @app.agent(billing_events, name="dunning-billing-events")
    async def on_billing_event(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            await consumer.consume(event)

    @app.timer(interval=settings.scheduler_interval_s, name="dunning-schedule")  # type: ignore[untyped-decorator]
    async def run_schedule() -> None:
        await _periodic("schedule", lambda: asyncio.to_thread(container.handlers.run_due))

    @app.timer(interval=settings.scheduler_interval_s, name="dunning-notifications")  # type: ignore[untyped-decorator]
    async def deliver_notifications() -> None:
        await _periodic("notifications", container.dispatcher.deliver_due)

    @app.timer(interval=max(settings.scheduler_interval_s, 5.0), name="dunning-reconciliation")  # type: ignore[untyped-decorator]
    async def reconcile_payments() -> None:
        # Unknown attempts first (a retry waits on them), then open invoices paid without our hearing.
        await _periodic("reconciliation", lambda: asyncio.to_thread(container.reconciler.run))

    return app


async def _periodic(name: str, job: Any) -> None:
    """Run one tick; a retryable failure (database or provider down) waits for the next tick."""
    try:
        await job()
    except InfrastructureError as exc:
        log.warning("periodic job failed; retrying on the next tick", extra=kv(job=name, error=str(exc)))


class _EventConsumer:
    """Decode -> handle -> done, with the error policy: retryable errors retry the same event (the offset
    does not move), terminal ones go to the DLQ with the reason in headers, nothing is dropped."""

    def __init__(self, container: DunningContainer, dead_letters: faust.TopicT) -> None:
        self._handlers = container.handlers
        self._dead_letters = dead_letters

    async def consume(self, event: EventT[Any]) -> None:
        message = event.message
        source = f"{message.topic}/{message.partition}/{message.offset}"
        unclassified_failures = 0
        backoff = 0.2
        while True:
            try:
                envelope = Envelope.from_bytes(event.value)
                await asyncio.to_thread(self._handlers.handle, envelope, source=source)
                return
            except EnvelopeError as exc:
                await self._dead_letter(event, source, exc)
                return
            except Exception as exc:
                retryable = getattr(exc, "retryable", None)
                if retryable is False:
                    await self._dead_letter(event, source, exc)
                    return
                if retryable is None:
                    unclassified_failures += 1
                    if unclassified_failures >= MAX_ATTEMPTS_FOR_UNCLASSIFIED_ERRORS:
                        log.exception("event keeps failing; dead-lettered", extra=kv(source=source))
                        await self._dead_letter(event, source, exc)
                        return
                log.warning("event failed; retrying", extra=kv(source=source, error=f"{type(exc).__name__}: {exc}",
                                                               backoff_s=backoff))
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _dead_letter(self, event: EventT[Any], source: str, error: BaseException) -> None:
        message = event.message
        headers = [*(message.headers or []),
                   ("dlq.error", f"{type(error).__name__}: {error}"[:1000].encode()),
                   ("dlq.source", source.encode()), ("dlq.consumer", b"dunning")]
        log.error("dead-lettered", extra=kv(source=source, error=str(error)[:500]))
        delivery = await self._dead_letters.send(key=message.key, value=event.value, headers=headers)
        await delivery
