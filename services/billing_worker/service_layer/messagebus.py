"""The billing worker's message bus: message type -> `Handler`, run inside the batch transaction.

Two parts, one dispatch path:

- `MessageBus.handle(uow, messages, at)` runs a run of messages of one type through one unit of work: the
  handler's prefetch for the whole run, then its use case per message in order, one outcome per command, one
  `commit()` (set-based writes), all under one savepoint. A command refused or ignored midway rolls that
  savepoint back; the messages before it are applied again together, it alone (its outcome, nothing else),
  and the rest together: each message is applied at most twice, and the savepoints grow with the refusals,
  not with the messages. A command whose outcome is stored already is not applied again (a replay).
- `BatchProcessor` applies one consumed batch: usage in bulk first (the usage materialiser), then the other
  messages in each key's order, runs of one type handed to the bus, under one SAVEPOINT; after a terminal
  failure, again in halves to isolate the message at fault.

The handler table is built explicitly in ``bootstrap.py`` (`billing_handlers`); the use cases and the
`Handler` contract are in ``handlers/``.

What the bus guarantees to a use case:
- It runs inside the batch's single PostgreSQL transaction: everything the unit of work writes (state, outbox
  rows, the outcome) commits together with the consumer offset, or not at all.
- Messages of one partition reach it in offset order; ``payload`` is already validated against
  ``shared.contracts.messages.PAYLOADS[envelope.type]``. Usage (``usage.recorded``) is not dispatched here.
- ``at`` is the billing-clock instant read once per batch (real or simulated clock): pass it to the domain,
  never read the wall clock.

What a use case signals back:
- Return normally: applied (commands get an `applied` outcome with the subscription's snapshot).
- Raise ``Ignored``: the command no longer applies (stored `ignored`); a payment outcome is acknowledged.
  What the use case wrote is rolled back, except the audit rows the ``Ignored`` carries (``audit=``).
- Raise ``Refused`` or a ``DomainError``: a command is stored `rejected` with the error's code (the edge
  answers 409); a payment outcome is dead-lettered.
- Raise ``MessageRejected`` (or any other non-infrastructure exception): the message is terminal. The batch's
  messages are rolled back and applied again in halves, each under a savepoint, down to the single message
  at fault; it goes to ``<topic>.dlq`` with its reason, a ``rejected`` outcome is stored for commands, and
  the partition moves on.

# NOTE: no savepoint per message. PostgreSQL keeps 64 subtransactions per backend in shared memory; past
# that, every snapshot of every session reads pg_subtrans and a batch of thousands of messages slowed to
# ~24 ms each. Messages run under one savepoint per batch (plus one per run of one type); the search for a
# poison message costs about three times the batch, once, and only when one is there.
- Let a database outage error escape: transient. The whole batch is rolled back and retried with backoff; no
  message is skipped while the database is out. Database errors are classified by SQLSTATE
  (``shared.adapters.postgres.errors``): a refusal of the data (too large for an index, value too long, a
  constraint) is terminal like ``MessageRejected``, whatever the driver's exception class.
- The bound: when a batch keeps failing with a transient error although the database answers, the consumer
  applies it once more as a *suspect* batch (``apply_prepared(..., suspect=...)``): the same halving search
  treats such an error as the message's fault, and the message at fault is parked in the DLQ with the
  reason ``retries_exhausted`` and the last error (an alert is logged); the rest of the batch applies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import sqlalchemy as sa

from services.billing_worker.service_layer.errors import Ignored, MessageRejected, error_code
from services.billing_worker.service_layer.handlers import Handler
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.adapters.kafka.dlq import DeadLetter
from shared.adapters.postgres import errors as pg_errors
from shared.adapters.retry_policy import is_outage, is_retryable
from shared.contracts import topics
from shared.contracts.envelope import Envelope, EnvelopeError
from shared.contracts.messages import parse_payload
from shared.domain.clock import Clock
from shared.domain.errors import DomainError
from shared.observability import kv

__all__ = ["BatchProcessor", "MessageBus", "MessageRejected", "RetriesExhausted", "Suspicion"]

log = logging.getLogger("billing_worker.commands")

Messages = Sequence[tuple[Envelope, Any]]
UnitOfWorkFactory = Callable[[sa.Connection], BillingUnitOfWork]


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


class MessageBus:
    """message type -> its `Handler` (exactly one per type); runs of messages through a unit of work."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)

    def handles(self, message_type: str) -> bool:
        return message_type in self._handlers

    def handled_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def handle(self, uow: BillingUnitOfWork, messages: Messages, at: datetime) -> None:
        """Apply `messages` (all of one type, in order) through `uow`, then commit it (see the module docstring)."""
        message_type = messages[0][0].type
        handler = self._handlers.get(message_type)
        if handler is None:  # the processor dead-letters these first; kept terminal should that ever change
            raise MessageRejected(f"no handler for message type {message_type!r}", code="unknown_type")
        pending = self._unanswered(uow, messages) if handler.answers else list(messages)
        while pending:
            if len(pending) == 1:
                self._run_one(uow, *pending[0], at, handler)
                return
            refused = self._run_together(uow, pending, at, handler)
            if refused is None:
                return
            log.info("a batch item was refused or ignored midway; applying around it",
                     extra={"items": len(pending), "refused": refused})
            if refused:
                self.handle(uow, pending[:refused], at)
            self._run_one(uow, *pending[refused], at, handler)
            pending = pending[refused + 1:]

    @staticmethod
    def _unanswered(uow: BillingUnitOfWork, messages: Messages) -> list[tuple[Envelope, Any]]:
        """The commands not applied yet: a command whose outcome is stored was applied (or refused) before,
        e.g. the topic is read again from the start, or the scheduler re-emitted it; it is not applied twice."""
        answered = uow.answered_commands([envelope.event_id for envelope, _ in messages])
        out, seen = [], set(answered)
        for envelope, payload in messages:
            if envelope.event_id not in seen:
                seen.add(envelope.event_id)
                out.append((envelope, payload))
        if len(out) < len(messages):
            log.info("commands already answered are not applied again", extra={"skipped": len(messages) - len(out)})
        return out

    @staticmethod
    def _run_together(uow: BillingUnitOfWork, messages: Messages, at: datetime, handler: Handler) -> int | None:
        """Apply and commit `messages` under one savepoint; None when done, else the index of the message that
        was refused or ignored after it changed something (the savepoint is then rolled back)."""
        precheck = handler.precheck if handler.answers else None
        refused: int | None = None
        try:
            with uow.savepoint():
                uow.begin(at)
                uow.load([str(p.subscription_id) for _, p in messages])
                if handler.prefetch is not None:
                    handler.prefetch(uow, messages, at)
                for index, (envelope, payload) in enumerate(messages):
                    sub_id = str(payload.subscription_id)
                    if precheck is not None:
                        try:
                            precheck(uow, payload, at)
                        except Ignored as why:
                            uow.outcome(envelope, sub_id, "ignored", detail=str(why))
                            continue
                        except DomainError as error:
                            uow.outcome(envelope, sub_id, "rejected", code=error_code(error), detail=str(error))
                            continue
                    try:
                        result = handler.apply(uow, envelope, payload, at)
                    except (Ignored, DomainError):
                        refused = index
                        raise
                    if handler.answers:
                        uow.outcome(envelope, sub_id, "applied", result=uow.applied(sub_id, result))
                uow.commit()
        except (Ignored, DomainError):
            if refused is None:
                raise  # refused while committing: not one message's doing (the processor isolates the culprit)
            return refused
        return None

    @staticmethod
    def _run_one(uow: BillingUnitOfWork, envelope: Envelope, payload: Any, at: datetime, handler: Handler) -> None:
        sub_id = str(payload.subscription_id)
        uow.begin(at)
        try:
            with uow.savepoint():
                # as in a run of many: its subscription is loaded before the use case runs (a use case such
                # as create asks uow.states whether it exists)
                uow.load([sub_id])
                if handler.prefetch is not None:
                    handler.prefetch(uow, [(envelope, payload)], at)
                result = handler.apply(uow, envelope, payload, at)
                if handler.answers:
                    uow.outcome(envelope, sub_id, "applied", result=uow.applied(sub_id, result))
                uow.commit()
            return
        except Ignored as why:
            # the rows an Ignored carries outlive the savepoint it rolled back (e.g. a duplicate charge's audit)
            kept_audit = why.audit
            if not handler.answers:
                log.info("payment outcome ignored", extra={"subscription_id": sub_id, "reason": str(why)})
                if kept_audit:
                    uow.begin(at)
                    for row in kept_audit:
                        uow.add_audit(**row)
                    uow.commit()
                return
            status, code, detail = "ignored", None, str(why)
        except DomainError as error:
            if not handler.answers:
                raise MessageRejected(f"{type(error).__name__}: {error}", code=error_code(error)) from error
            log.info("command rejected", extra={"subscription_id": sub_id, "type": envelope.type,
                                                "code": error_code(error), "reason": str(error)[:300]})
            status, code, detail = "rejected", error_code(error), str(error)
            kept_audit = ()
        uow.begin(at)
        uow.outcome(envelope, sub_id, status, code=code, detail=detail)
        for row in kept_audit:
            uow.add_audit(**row)
        uow.commit()


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


# The commands that close a period (the usage-path hooks cannot see what a close consumed or re-armed).
CLOSING_TYPES = frozenset({"period.close", "trial.end"})


class BatchProcessor:
    """Applies one consumed batch inside the batch transaction: usage in bulk first, then the other messages
    in each key's order, runs of one type through the message bus, under one SAVEPOINT; after a terminal failure,
    again in halves to isolate the message at fault.

    Returns the dead letters (undecodable or refused messages); a transient error propagates so the
    consumer rolls the whole batch back and retries it.
    """

    def __init__(self, bus: MessageBus, unit_of_work: UnitOfWorkFactory, materializer: Any, clock: Clock,
                 after_usage: Callable[[sa.Connection, Sequence[Any], datetime], object] | None = None,
                 after_closes: Callable[[sa.Connection, set[str], datetime], object] | None = None) -> None:
        self._bus = bus
        # Once per batch that applied usage, with the batch's usage records (auto-recharge hints, issue 15).
        self._after_usage = after_usage
        # Once per batch that closed periods, with their subscriptions, once the closes are written (alerts).
        self._after_closes = after_closes
        self._unit_of_work = unit_of_work
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
            if self._after_usage is not None and batch.usage_prepared.lines:
                self._after_usage(conn, batch.usage, self._clock.now())
        messages: list[_Decoded] = []
        if batch.others:
            now = self._clock.now()
            uow = self._unit_of_work(conn)
            messages = self._decode(uow, batch.others, now, dead)
            if messages:
                try:
                    with uow.savepoint():
                        self._run(uow, messages, now)
                except Exception as error:
                    if not _is_fault(error, suspect):
                        raise
                    self._log.warning("a message of the batch was refused; isolating it",
                                      extra=kv(error=pg_errors.describe(error)[:300],
                                               error_class=type(error).__name__, messages=len(messages)))
                    self._isolate(uow, messages, now, dead, suspect)
            closed = {str(m.payload.subscription_id) for m in messages if m.envelope.type in CLOSING_TYPES}
            if self._after_closes is not None and closed:
                self._after_closes(conn, closed, now)
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

    def _decode(self, uow: BillingUnitOfWork, records: Sequence[Any], now: datetime,
                dead: list[DeadLetter]) -> list[_Decoded]:
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
            if not self._bus.handles(envelope.type):
                unknown = MessageRejected(f"no handler for message type {envelope.type!r} on {record.topic}",
                                          code="unknown_type")
                self._dead(uow, record, envelope, unknown, now, dead)
                continue
            out.append(_Decoded(record, envelope, payload))
        return out

    def _steps(self, messages: Sequence[_Decoded]) -> list[list[_Decoded]]:
        """Messages in the order to apply them: each message joins the latest run of its (topic, type) when no
        later step holds a message of its key, else starts a new step."""
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
                index = open_run[kind] = len(steps) - 1
            last_step_of_key[key] = max(index, last_step_of_key.get(key, -1))
        return steps

    def _run(self, uow: BillingUnitOfWork, messages: Sequence[_Decoded], now: datetime) -> None:
        for step in self._steps(messages):
            self._bus.handle(uow, [(m.envelope, m.payload) for m in step], now)

    def _isolate(self, uow: BillingUnitOfWork, messages: Sequence[_Decoded], now: datetime,
                 dead: list[DeadLetter], suspect: Suspicion | None = None) -> None:
        """Apply `messages` in halves, each under a savepoint, recursing into a half that fails, down to the
        single messages at fault (dead letters). Halves keep the consumed order, so each key's order holds."""
        if len(messages) == 1:
            m = messages[0]
            try:
                with uow.savepoint():
                    self._run(uow, messages, now)
            except Exception as error:
                if not _is_fault(error, suspect):
                    raise
                self._park_alert(m.record, m.envelope, error, suspect)
                self._dead(uow, m.record, m.envelope, _as_refusal(error, suspect), now, dead)
            return
        middle = len(messages) // 2
        for half in (messages[:middle], messages[middle:]):
            try:
                with uow.savepoint():
                    self._run(uow, half, now)
            except Exception as error:
                if not _is_fault(error, suspect):
                    raise
                self._isolate(uow, half, now, dead, suspect)

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

    def _dead(self, uow: BillingUnitOfWork, record: Any, envelope: Envelope, error: BaseException, now: datetime,
              dead: list[DeadLetter]) -> None:
        dead.append(DeadLetter.of(record.topic, record.partition, record.offset, record.key, record.value, error))
        if record.topic == topics.COMMANDS:
            # The edge may be waiting for this command: tell it, rather than let it time out. The outcome is
            # keyed by the payload's subscription id, which may be the very value the database refused: then
            # the dead letter alone says why (an error here must not fail the batch and stop the worker).
            try:
                with uow.savepoint():
                    uow.begin(now)
                    uow.outcome(envelope, str(envelope.payload.get("subscription_id") or ""), "rejected",
                                code=getattr(error, "code", None) or "unprocessable",
                                detail=f"{type(error).__name__}: {error}")
                    uow.commit()
            except Exception as outcome_error:
                if is_retryable(outcome_error):
                    raise
                self._log.warning("the rejected outcome of a dead-lettered command cannot be stored", extra=kv(
                    topic=record.topic, partition=record.partition, offset=record.offset,
                    event_id=str(envelope.event_id), error=pg_errors.describe(outcome_error)[:300]))
