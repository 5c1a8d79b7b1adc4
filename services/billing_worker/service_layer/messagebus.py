"""The dispatch seam of the billing worker: message type -> handler, run inside the batch transaction.

Contract for handler modules (worker-billing's ``services/billing_worker/service_layer/commands.py``):

    from services.billing_worker.service_layer.messagebus import (
        HandlerContext, HandlerRegistry, MessageRejected, WorkerDeps)

    def register(registry: HandlerRegistry, deps: WorkerDeps) -> None:
        registry.register("subscription.create", handle_create)       # one handler per message type
        registry.register("payment.succeeded", handle_payment_succeeded)
        registry.register_batch("period.close", close_periods)       # optional: many messages in one call
        registry.add_background(PaymentExecutor(deps))                # optional: start()/stop() services

    def handle_create(conn: sa.Connection, envelope: Envelope, payload: CreateSubscription,
                      ctx: HandlerContext) -> None:
        ...                                                   # read/write state through `conn`
        ctx.emit("subscription.status_changed", {...}, key=payload.subscription_id)   # -> outbox row
        ctx.record_outcome("applied", result={...})          # -> command_outcomes (commands only)

    def close_periods(conn: sa.Connection, items: Sequence[tuple[Envelope, ClosePeriod]], now: datetime) -> None:
        ...                                                   # same contract, for all of `items` at once

The composition root (``bootstrap.py``) calls ``commands.register(registry, deps)`` once at start.

What the engine guarantees to a handler:
- It runs inside the batch's single PostgreSQL transaction: everything it writes through ``conn`` (state,
  outbox rows, the outcome) commits together with the consumer offset, or not at all. It must not commit,
  roll back or open other connections for state it owns. If it fails, its effects are rolled back.
- A batch handler receives runs of messages of its type: as many as the batch holds, taken out of the
  consumed order only past messages of other keys, so each key's messages keep their order.
- Messages of one partition reach it in offset order; ``payload`` is already validated against
  ``shared.contracts.messages.PAYLOADS[envelope.type]``. Usage (``usage.recorded``) is not dispatched
  here; the usage materialiser (``usage.py``) applies it in bulk before the batch's commands.
- ``ctx.now`` is the billing-clock instant read once per batch (real or simulated clock): pass it to
  the domain, never read the wall clock.
- A replay (after a crash before commit, or an operator re-reading the topic) calls it again with the
  same envelope: handlers stay idempotent through unique constraints (rule 3), and ``record_outcome``
  and ``emit(event_id=...)`` are no-ops the second time.

What a handler signals back:
- Return normally: applied (or deliberately ignored: record ``status="ignored"``). A business refusal
  of a command (e.g. cancel an already cancelled subscription) is a normal return with
  ``ctx.record_outcome("rejected", error_code=..., error_detail=...)``: the edge answers 409.
- Raise ``MessageRejected`` (or any exception whose class has ``retryable = False``, e.g. a
  ``DomainError``, or any other non-infrastructure exception): the message is terminal. The batch's
  messages are rolled back and applied again in halves, each under a savepoint, down to the single message
  at fault; it goes to ``<topic>.dlq`` with its reason, a ``rejected`` outcome is stored for commands, and
  the partition moves on. A batch handler that raises has all of its items go through that search.

# NOTE: no savepoint per message. PostgreSQL keeps 64 subtransactions per backend in shared memory; past
# that, every snapshot of every session reads pg_subtrans and a batch of thousands of messages slowed to
# ~24 ms each. Messages run under one savepoint per batch (plus one per unit of work in the handlers); the
# search for a poison message costs about three times the batch, once, and only when one is there.
- Raise an ``InfrastructureError`` (or let a database outage error escape): transient. The whole
  batch is rolled back and retried with backoff; no message is skipped while the database is out. Database
  errors are classified by SQLSTATE (``shared.adapters.postgres.errors``): a refusal of the data (too large
  for an index, value too long, a constraint) is terminal like ``MessageRejected``, whatever the driver's
  exception class.
- The bound: when a batch keeps failing with a transient error although the database answers, the consumer
  applies it once more as a *suspect* batch (``apply_prepared(..., suspect=...)``): the same halving search
  treats such an error as the message's fault, and the message at fault is parked in the DLQ with the
  reason ``retries_exhausted`` and the last error (an alert is logged); the rest of the batch applies.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared.adapters.kafka.dlq import DeadLetter
from shared.adapters.postgres import errors as pg_errors
from shared.adapters.postgres.schema.core import command_outcomes, outbox
from shared.adapters.retry_policy import is_outage, is_retryable
from shared.config import Settings
from shared.contracts import topics
from shared.contracts.envelope import Envelope, EnvelopeError, new_envelope
from shared.contracts.messages import Payload, parse_payload
from shared.domain.clock import Clock
from shared.observability import bound, kv

PRODUCER_NAME = "billing-worker"

Handler = Callable[[sa.Connection, Envelope, Any, "HandlerContext"], None]
# (conn, [(envelope, payload), ...] in order, the batch's billing instant)
BatchHandler = Callable[[sa.Connection, Sequence[tuple[Envelope, Any]], datetime], None]


class MessageRejected(Exception):
    """A handler refuses this message for good (it cannot be applied, whatever the retries): DLQ."""

    retryable: ClassVar[bool] = False

    def __init__(self, reason: str, *, code: str = "rejected") -> None:
        super().__init__(reason)
        self.code = code


class BackgroundTask(Protocol):
    """A service that runs beside the consumer loop in the worker process (executor, scheduler)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class WorkerDeps:
    """What the composition root hands to handler modules when they register."""

    settings: Settings
    engine: sa.Engine
    clock: Clock
    catalog: Any  # shared.domain.catalog.Catalog


@dataclass(frozen=True)
class Suspicion:
    """A batch failed `attempts` times with a transient error although the database answered."""

    attempts: int
    last_error: BaseException


class RetriesExhausted(MessageRejected):
    """Parked: this message kept failing with a 'transient' error while the database answered, and others of
    its batch applied."""

    CODE: ClassVar[str] = "retries_exhausted"

    def __init__(self, suspicion: Suspicion, error: BaseException) -> None:
        super().__init__(f"retries_exhausted after {suspicion.attempts} attempts while the database answered; "
                         f"last error: {type(pg_errors.driver_error(error) or error).__name__}: "
                         f"{pg_errors.describe(error)}",
                         code=self.CODE)


def _is_fault(error: BaseException, suspect: Suspicion | None) -> bool:
    """Is `error` the fault of the messages being applied (search for them), rather than an outage?"""
    if not is_retryable(error):
        return True
    return suspect is not None and not is_outage(error)


def _as_refusal(error: BaseException, suspect: Suspicion | None) -> BaseException:
    """What the DLQ and the command outcome say about a message at fault."""
    if suspect is not None and is_retryable(error):
        return RetriesExhausted(suspect, error)
    return pg_errors.translate(error)


def outbox_row(envelope: Envelope, *, key: str, topic: str = topics.BILLING_EVENTS) -> dict[str, Any]:
    return {"topic": topic, "message_key": key, "event_id": envelope.event_id, "event_type": envelope.type,
            "envelope": envelope.model_dump(mode="json")}


def add_outbox(conn: sa.Connection, envelope: Envelope, *, key: str, topic: str = topics.BILLING_EVENTS) -> None:
    """Write one outbox row in the caller's transaction; a second row with the same event_id is a no-op."""
    conn.execute(insert(outbox).values(**outbox_row(envelope, key=key, topic=topic))
                 .on_conflict_do_nothing(index_elements=["event_id"]))


def record_command_outcome(conn: sa.Connection, command: Envelope, *, subscription_id: str, status: str,
                           error_code: str | None = None, error_detail: str | None = None,
                           result: Mapping[str, Any] | None = None) -> None:
    """Store the worker's answer to a command (keyed by its event_id) so the edge can answer or be polled.

    status is 'applied', 'rejected' or 'ignored'. The first outcome stored for a command wins (replays
    keep it).
    """
    conn.execute(insert(command_outcomes).values(
        command_id=command.event_id, subscription_id=subscription_id, command_type=command.type,
        status=status, error_code=error_code, error_detail=error_detail,
        result=dict(result) if result is not None else None,
    ).on_conflict_do_nothing(index_elements=["command_id"]))


@dataclass
class HandlerContext:
    """Per-message context: the billing instant, Kafka coordinates, and the transactional side effects."""

    conn: sa.Connection
    envelope: Envelope
    now: datetime
    topic: str
    partition: int
    offset: int
    key: str | None
    log: logging.LoggerAdapter  # type: ignore[type-arg]
    emitted: list[Envelope] = field(default_factory=list)

    def emit(self, type_: str, payload: Payload | Mapping[str, Any], *, key: str,
             topic: str = topics.BILLING_EVENTS, event_id: uuid.UUID | None = None,
             occurred_at: datetime | None = None) -> Envelope:
        """Add an outgoing event to the outbox, in this transaction. Give a deterministic `event_id`
        (e.g. uuid5 of the invoice id and the event type) when a replay must not emit a second copy."""
        body = payload.model_dump(mode="json") if isinstance(payload, Payload) else dict(payload)
        envelope = new_envelope(type_, body, producer=PRODUCER_NAME, occurred_at=occurred_at or self.now,
                                correlation_id=str(self.envelope.event_id), event_id=event_id)
        add_outbox(self.conn, envelope, key=key, topic=topic)
        self.emitted.append(envelope)
        return envelope

    def record_outcome(self, status: str, *, subscription_id: str | None = None,
                       error_code: str | None = None, error_detail: str | None = None,
                       result: Mapping[str, Any] | None = None) -> None:
        """Store this command's outcome (subscription_id defaults to the payload's, else the key)."""
        sub = subscription_id or str(self.envelope.payload.get("subscription_id") or self.key or "")
        record_command_outcome(self.conn, self.envelope, subscription_id=sub, status=status,
                               error_code=error_code, error_detail=error_detail, result=result)


class HandlerRegistry:
    """message type -> handler (exactly one per type), plus background tasks to run in the worker."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._batch_handlers: dict[str, BatchHandler] = {}
        self._background: list[BackgroundTask] = []

    def register(self, message_type: str, handler: Handler) -> None:
        if message_type in self._handlers:
            raise ValueError(f"a handler for {message_type!r} is already registered")
        self._handlers[message_type] = handler

    def register_batch(self, message_type: str, handler: BatchHandler) -> None:
        """Apply runs of `message_type` messages in one call (preferred over the per-message handler)."""
        if message_type in self._batch_handlers:
            raise ValueError(f"a batch handler for {message_type!r} is already registered")
        self._batch_handlers[message_type] = handler

    def handler_for(self, message_type: str) -> Handler | None:
        return self._handlers.get(message_type)

    def batch_handler_for(self, message_type: str) -> BatchHandler | None:
        return self._batch_handlers.get(message_type)

    def handled_types(self) -> frozenset[str]:
        return frozenset(self._handlers) | frozenset(self._batch_handlers)

    def add_background(self, task: BackgroundTask) -> None:
        self._background.append(task)

    @property
    def background(self) -> tuple[BackgroundTask, ...]:
        return tuple(self._background)


@dataclass(frozen=True)
class PreparedBatch:
    """A consumed batch after ``BatchProcessor.prepare``: usage records and their decoded rows
    (``services.billing_worker.adapters.usage.PreparedUsage``), and the other records, still raw."""

    usage: Sequence[Any]
    usage_prepared: Any
    others: Sequence[Any]


@dataclass(frozen=True, slots=True)
class _Decoded:
    """A non-usage record of the batch, decoded."""

    record: Any
    envelope: Envelope
    payload: Any


class BatchProcessor:
    """Applies one consumed batch inside the batch transaction: usage in bulk first, then the other messages
    in each key's order through their handlers (runs of one type through its batch handler), under one
    SAVEPOINT; after a terminal failure, again in halves to isolate the message at fault.

    Returns the dead letters (undecodable or refused messages); a transient error propagates so the
    consumer rolls the whole batch back and retries it.
    """

    def __init__(self, registry: HandlerRegistry, materializer: Any, clock: Clock) -> None:
        self._registry = registry
        self._usage = materializer  # services.billing_worker.adapters.usage.UsageMaterializer
        self._clock = clock
        self._log = logging.getLogger("billing_worker.processor")
        # Usage statistics of the batch in progress, per thread: the consumer's commit lanes apply
        # batches concurrently, each calling on_commit in the thread that applied its batch.
        self._local = threading.local()
        self._totals_lock = threading.Lock()

    @property
    def _pending(self) -> list[Any]:
        pending: list[Any] | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending

    def on_commit(self) -> None:
        """Count the usage statistics of the batch that just committed (rolled-back work is not counted)."""
        with self._totals_lock:
            for stats in self._pending:
                self._usage.totals.add(stats)
        self._pending.clear()

    def __call__(self, conn: sa.Connection, records: Sequence[Any], *,
                 suspect: Suspicion | None = None) -> list[DeadLetter]:
        return self.apply_prepared(conn, self.prepare(records), suspect=suspect)

    def prepare(self, records: Sequence[Any]) -> PreparedBatch:
        """The connection-free part of a batch (decoding and rendering usage): the consumer runs it for the
        next batch while PostgreSQL works on the current one. Deterministic: re-preparing gives the same."""
        usage = [r for r in records if r.topic == topics.USAGE]
        others = [r for r in records if r.topic != topics.USAGE]
        prepared = self._usage.prepare([r.value for r in usage], [r.key for r in usage]) if usage else None
        return PreparedBatch(usage, prepared, others)

    def apply_prepared(self, conn: sa.Connection, batch: PreparedBatch, *,
                       suspect: Suspicion | None = None) -> list[DeadLetter]:
        """Apply a prepared batch in the caller's transaction; returns its dead letters. Safe to call from
        several threads at once for batches of different partitions. With `suspect`, a transient error
        that is not an outage is charged to the message that raised it (parked as ``RetriesExhausted``)."""
        self._pending.clear()
        dead: list[DeadLetter] = []
        if batch.usage_prepared is not None:
            self._apply_usage(conn, batch.usage, batch.usage_prepared, dead, suspect)
        messages: list[_Decoded] = []
        if batch.others:
            now = self._clock.now()
            messages = self._decode(conn, batch.others, dead)
            if messages:
                try:
                    with conn.begin_nested():
                        self._run(conn, messages, now)
                except Exception as error:
                    if not _is_fault(error, suspect):
                        raise
                    self._log.warning("a message of the batch was refused; isolating it",
                                      extra=kv(error=pg_errors.describe(error)[:300],
                                               error_class=type(error).__name__, messages=len(messages)))
                    self._isolate(conn, messages, now, dead, suspect)
        if suspect is not None:
            applicable = len(messages) + (len(batch.usage_prepared.lines) if batch.usage_prepared is not None else 0)
            parked = sum(1 for letter in dead if letter.reason == RetriesExhausted.CODE)
            if applicable > 1 and parked == applicable:
                # NOTE: every message failed on its own: the cause is around the batch (a lock held by a
                # migration, a timeout set on the role), not in it. Parking would empty the stream into the
                # DLQ; retry the batch instead (the transaction rolls back) and keep logging.
                raise suspect.last_error
        return dead

    def _apply_usage(self, conn: sa.Connection, records: Sequence[Any], prepared: Any,
                     dead: list[DeadLetter], suspect: Suspicion | None) -> None:
        for index, error in prepared.refused:
            r = records[index]
            dead.append(DeadLetter.of(r.topic, r.partition, r.offset, r.key, r.value, error))
        if not prepared.lines:
            return
        try:
            with conn.begin_nested():
                self._pending.append(self._usage.apply_lines(conn, prepared.lines))
            return
        except Exception as error:
            if not _is_fault(error, suspect):
                raise
            self._log.warning("bulk usage apply refused, isolating the message at fault",
                              extra=kv(error=pg_errors.describe(error)[:300], records=len(prepared.lines)))
        # Slow path: one savepoint per event isolates the poison; the rest of the batch is kept.
        for index, line in zip(prepared.accepted, prepared.lines, strict=True):
            r = records[index]
            try:
                with conn.begin_nested():
                    self._pending.append(self._usage.apply_lines(conn, [line]))
            except Exception as error:
                if not _is_fault(error, suspect):
                    raise
                self._park_alert(r, None, error, suspect)
                dead.append(DeadLetter.of(r.topic, r.partition, r.offset, r.key, r.value,
                                          _as_refusal(error, suspect)))

    def _decode(self, conn: sa.Connection, records: Sequence[Any], dead: list[DeadLetter]) -> list[_Decoded]:
        """Decode and validate; undecodable messages and types nobody handles are dead letters at once."""
        out: list[_Decoded] = []
        for record in records:
            try:
                envelope = Envelope.from_bytes(record.value)
                payload = parse_payload(envelope)
            except EnvelopeError as error:
                dead.append(DeadLetter.of(record.topic, record.partition, record.offset, record.key,
                                          record.value, error))
                continue
            if (self._registry.batch_handler_for(envelope.type) is None
                    and self._registry.handler_for(envelope.type) is None):
                unknown = MessageRejected(f"no handler for message type {envelope.type!r} on {record.topic}",
                                          code="unknown_type")
                self._dead(conn, record, envelope, unknown, dead)
                continue
            out.append(_Decoded(record, envelope, payload))
        return out

    def _steps(self, messages: Sequence[_Decoded]) -> list[list[_Decoded]]:
        """Messages in the order to apply them: each message joins the latest run of its (topic, type) when
        its batch handler exists and no later step holds a message of its key, else starts a new step."""
        steps: list[list[_Decoded]] = []
        open_run: dict[tuple[str, str], int] = {}
        last_step_of_key: dict[bytes | None, int] = {}
        for m in messages:
            kind = (m.record.topic, m.envelope.type)
            key = m.record.key
            index = open_run.get(kind)
            if index is not None and last_step_of_key.get(key, -1) <= index:
                steps[index].append(m)
            else:
                steps.append([m])
                index = len(steps) - 1
                if self._registry.batch_handler_for(m.envelope.type) is not None:
                    open_run[kind] = index
            last_step_of_key[key] = max(index, last_step_of_key.get(key, -1))
        return steps

    def _run(self, conn: sa.Connection, messages: Sequence[_Decoded], now: datetime) -> None:
        for step in self._steps(messages):
            batch_handler = self._registry.batch_handler_for(step[0].envelope.type)
            if batch_handler is not None:
                batch_handler(conn, [(m.envelope, m.payload) for m in step], now)
                continue
            for m in step:
                handler = self._registry.handler_for(m.envelope.type)
                if handler is None:  # _decode dead-letters these; kept terminal should that ever change
                    raise MessageRejected(f"no handler for message type {m.envelope.type!r}", code="unknown_type")
                r = m.record
                key = r.key.decode(errors="replace") if r.key else None
                ctx = HandlerContext(conn, m.envelope, now, r.topic, r.partition, r.offset, key,
                                     bound(self._log, topic=r.topic, partition=r.partition, offset=r.offset,
                                           key=key, type=m.envelope.type, event_id=str(m.envelope.event_id)))
                handler(conn, m.envelope, m.payload, ctx)

    def _isolate(self, conn: sa.Connection, messages: Sequence[_Decoded], now: datetime,
                 dead: list[DeadLetter], suspect: Suspicion | None = None) -> None:
        """Apply `messages` in halves, each under a savepoint, recursing into a half that fails, down to the
        single messages at fault (dead letters). Halves keep the consumed order, so each key's order holds."""
        if len(messages) == 1:
            m = messages[0]
            try:
                with conn.begin_nested():
                    self._run(conn, messages, now)
            except Exception as error:
                if not _is_fault(error, suspect):
                    raise
                self._park_alert(m.record, m.envelope, error, suspect)
                self._dead(conn, m.record, m.envelope, _as_refusal(error, suspect), dead)
            return
        middle = len(messages) // 2
        for half in (messages[:middle], messages[middle:]):
            try:
                with conn.begin_nested():
                    self._run(conn, half, now)
            except Exception as error:
                if not _is_fault(error, suspect):
                    raise
                self._isolate(conn, half, now, dead, suspect)

    def _park_alert(self, record: Any, envelope: Envelope | None, error: BaseException,
                    suspect: Suspicion | None) -> None:
        """An alert for a human when a message is parked for a transient error rather than refused."""
        if suspect is None or not is_retryable(error):
            return
        self._log.error("message parked: it kept failing while the database answered (retries_exhausted)", extra=kv(
            topic=record.topic, partition=record.partition, offset=record.offset,
            key=record.key.decode(errors="replace") if record.key else None,
            type=envelope.type if envelope else None, event_id=str(envelope.event_id) if envelope else None,
            subscription_id=envelope.payload.get("subscription_id") if envelope else None,
            attempts=suspect.attempts, error_class=type(error).__name__, error=pg_errors.describe(error)[:500]))

    def _dead(self, conn: sa.Connection, record: Any, envelope: Envelope, error: BaseException,
              dead: list[DeadLetter]) -> None:
        dead.append(DeadLetter.of(record.topic, record.partition, record.offset, record.key, record.value, error))
        if record.topic == topics.COMMANDS:
            # The edge may be waiting for this command: tell it, rather than let it time out. The outcome is
            # keyed by the payload's subscription id, which may be the very value the database refused: then
            # the dead letter alone says why (an error here must not fail the batch and stop the worker).
            try:
                with conn.begin_nested():
                    record_command_outcome(
                        conn, envelope, subscription_id=str(envelope.payload.get("subscription_id") or ""),
                        status="rejected", error_code=getattr(error, "code", None) or "unprocessable",
                        error_detail=f"{type(error).__name__}: {error}"[:1000])
            except Exception as outcome_error:
                if is_retryable(outcome_error):
                    raise
                self._log.warning("the rejected outcome of a dead-lettered command cannot be stored", extra=kv(
                    topic=record.topic, partition=record.partition, offset=record.offset,
                    event_id=str(envelope.event_id), error=pg_errors.describe(outcome_error)[:300]))
