"""The exactly-once consumer: Kafka in, PostgreSQL effects and offsets out, in one transaction per batch.

Kafka's exactly-once stops at Kafka; ours stops at the PostgreSQL commit (DESIGN rule 2):

- Kafka auto-commit is off and Kafka offsets are never committed. The position of each partition is
  `consumer_offsets.next_offset`, written in the same transaction as the batch's effects.
- On assignment (cooperative-sticky, incremental callbacks) the new owner bumps the partition's `epoch`
  in PostgreSQL and seeks to the stored offset. The bump waits for a commit in flight by the previous
  owner (row lock), so it always reads the final offset.
- Each batch ends with `UPDATE consumer_offsets SET next_offset = ... WHERE epoch = <mine>`. If a
  partition was taken over meanwhile (this instance was paused, revoked or lost its session), the
  update misses, FencedError is raised and the whole transaction rolls back: a stale owner never
  commits. Its fenced partitions are paused until Kafka assigns them again.
- Poison (undecodable, or refused by its handler) is sent to `<topic>.dlq` and acknowledged *before*
  the transaction that moves the offset past it commits; the rest of the batch is kept.
- Transient failures (database, broker) roll the batch back and retry it with capped exponential
  backoff; while the database or the broker does not answer, a message is never skipped. A batch-level
  error that is not transient stops the worker (a bug must not be dead-lettered wholesale); a restart
  resumes from the stored offsets.
- The bound: after `worker_attempts_before_parking` failed attempts with a transient error that is not an
  outage, a probe on a fresh connection asks whether PostgreSQL answers. If it does, the batch is at fault,
  not the database: it is applied again as a suspect batch (``processor.Suspicion``), whose halving search
  parks the message at fault in the DLQ (reason ``retries_exhausted``) and applies the rest. Otherwise the
  retries go on, with backoff capped at `max_backoff_s`.
- Pipelining (``run``, when the apply callable offers ``prepare`` / ``apply_prepared``): while a
  committer thread applies and commits batch N, the polling thread fetches and prepares (decodes)
  batch N+1. With ``commit_lanes`` > 1 the usage partitions are split over that many lanes (a partition
  always in the same lane), each with its own committer and PostgreSQL connection, so PostgreSQL works
  on several batches at once. Within a lane batches commit one at a time, in order, each with its own
  partitions' offsets, so nothing above changes: a lane's N+1 is submitted only after its N committed;
  if N rolled back for good (fenced), N+1 is discarded and the lane's partitions are rewound to N's
  first records; a rebalance callback first waits for every batch in flight, so partitions only change
  hands between batches, as without pipelining.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from sqlalchemy.dialects.postgresql import insert

from services.billing_worker.service_layer.messagebus import Suspicion
from shared.adapters.kafka.dlq import DeadLetter, DeadLetterPublisher
from shared.adapters.postgres.errors import describe
from shared.adapters.postgres.health import DatabaseProbe
from shared.adapters.postgres.schema.core import consumer_offsets
from shared.adapters.retry_policy import is_outage, is_retryable
from shared.config import Settings
from shared.contracts.topics import USAGE as USAGE_TOPIC
from shared.errors import FencedError
from shared.observability import kv

log = logging.getLogger("billing_worker.consumer")


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed message, with its logical topic name (the settings' prefix removed)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


# apply(conn, records) -> dead letters; runs inside the batch transaction.
BatchApply = Callable[[sa.Connection, Sequence[Record]], list[DeadLetter]]


class PartitionsFenced(FencedError):
    def __init__(self, partitions: set[tuple[str, int]]) -> None:
        super().__init__(f"fenced on {sorted(partitions)}")
        self.partitions = partitions


@dataclass
class _Lane:
    """One commit lane of the pipelined loop: consumed records waiting, the next batch prepared ahead, and
    the batch its committer is applying."""

    buffer: list[Record] = field(default_factory=list)
    ready: tuple[list[Record], Any] | None = None
    in_flight: tuple[list[Record], Future[_Outcome]] | None = None

    def discard(self) -> list[Record]:
        """Everything consumed but not submitted, in consumption order (to be rewound)."""
        out = [*(self.ready[0] if self.ready is not None else ()), *self.buffer]
        self.ready, self.buffer = None, []
        return out


# What became of a batch handed to the committer thread.
_Outcome = Literal["committed", "aborted"] | PartitionsFenced


@dataclass
class ConsumerStats:
    batches: int = 0
    records: int = 0
    dead_letters: int = 0
    retries: int = 0
    fenced: int = 0
    suspect_batches: int = 0


class ExactlyOnceConsumer:
    def __init__(self, settings: Settings, engine: sa.Engine, apply: BatchApply, dead_letters: DeadLetterPublisher,
                 *, topics: Sequence[str], instance_id: str, group_id: str | None = None,
                 max_backoff_s: float = 5.0, consumer_overrides: dict[str, object] | None = None,
                 commit_lanes: int = 1) -> None:
        self._settings = settings
        self._engine = engine
        self._apply = apply
        self._dlq = dead_letters
        self._logical = {settings.topic(t): t for t in topics}
        self._group = group_id or settings.consumer_group
        self._instance = instance_id
        self._max_backoff = max_backoff_s
        self._epochs: dict[tuple[str, int], int] = {}  # owned (logical topic, partition) -> epoch
        config = settings.kafka_consumer_config(self._group, **{
            "client.id": instance_id, "partition.assignment.strategy": settings.worker_partition_assignment,
            **(consumer_overrides or {})})
        # range is an eager protocol: each rebalance hands over whole assignments (assign/unassign), where
        # cooperative-sticky hands over increments
        self._eager = config["partition.assignment.strategy"] != "cooperative-sticky"
        self._consumer = Consumer(config)
        self.stats = ConsumerStats()
        self._closed = False
        self._lane_states = [_Lane() for _ in range(max(1, commit_lanes))]  # pipelined mode only
        self._counters = threading.Lock()  # stats and DLQ publishing, shared by the lanes
        self._attempts_before_parking = settings.worker_attempts_before_parking
        self._database = DatabaseProbe(engine.url)

    # ------------------------------------------------------------------ lifecycle

    def subscribe(self) -> None:
        self._consumer.subscribe(list(self._logical), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; the batch in progress is finished (or rolled back) first.

        Pipelined (see the module docstring) when the apply callable has ``prepare`` and
        ``apply_prepared``; otherwise one batch at a time, as ``poll_once``.
        """
        self.subscribe()
        try:
            if hasattr(self._apply, "prepare") and hasattr(self._apply, "apply_prepared"):
                self._run_pipelined(stop)
            else:
                while not stop.is_set():
                    self.poll_once(stop)
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()
            self._database.close()

    def owned(self) -> dict[tuple[str, int], int]:
        return dict(self._epochs)

    # ------------------------------------------------------------------ the loop

    def poll_once(self, stop: threading.Event | None = None) -> int:
        """Consume one batch and apply it exactly once; returns the number of records committed."""
        messages = self._consumer.consume(self._settings.worker_batch_max, self._settings.worker_batch_timeout_s)
        records = self._records(messages)
        if not records:
            return 0
        return self._process_with_retry(records, stop)

    # ------------------------------------------------------------------ the pipelined loop

    def _lane_of(self, topic: str, partition: int) -> int:
        # NOTE: only usage spreads over lanes; commands and payments stay in lane 0, so their handlers
        # never run concurrently with each other (usage shares no state with them, only rows under locks).
        return partition % len(self._lane_states) if topic == USAGE_TOPIC else 0

    def _run_pipelined(self, stop: threading.Event) -> None:
        batch_max = self._settings.worker_batch_max
        lanes = self._lane_states
        with ThreadPoolExecutor(len(lanes), thread_name_prefix="batch-commit") as committers:
            try:
                while not stop.is_set():
                    waiting = any(lane.buffer or lane.ready for lane in lanes)
                    if sum(len(lane.buffer) for lane in lanes) < batch_max * len(lanes):
                        # While records wait for a busy lane, poll briefly so a freed lane gets work at once.
                        timeout = 0.005 if waiting else self._settings.worker_batch_timeout_s
                        for r in self._records(self._consumer.consume(batch_max, timeout)):
                            lanes[self._lane_of(r.topic, r.partition)].buffer.append(r)
                    else:  # enough buffered: wait for a lane to free up instead of fetching more
                        wait_for_futures([lane.in_flight[1] for lane in lanes if lane.in_flight is not None],
                                         timeout=self._settings.worker_batch_timeout_s, return_when=FIRST_COMPLETED)
                    for index in range(len(lanes)):
                        self._advance(index, committers, stop)
            finally:
                for index in range(len(lanes)):
                    self._settle(index, block=True)

    def _advance(self, index: int, committers: ThreadPoolExecutor, stop: threading.Event) -> None:
        """Move one lane on: collect its finished batch, submit the next one (prepared ahead if possible)."""
        lane = self._lane_states[index]
        batch_max = self._settings.worker_batch_max
        if lane.in_flight is not None and not lane.in_flight[1].done():
            if lane.ready is None and len(lane.buffer) >= batch_max:
                lane.ready = self._take(lane)  # decode the next batch while PostgreSQL works on this one
            return
        if not self._settle(index, block=True):
            return
        if lane.ready is None and lane.buffer:
            lane.ready = self._take(lane)
        if lane.ready is not None:
            records, prepared = lane.ready
            lane.ready = None
            # Rebalance callbacks purge what they take away: every record here is still owned.
            epochs = {(r.topic, r.partition): self._epochs[(r.topic, r.partition)] for r in records}
            lane.in_flight = (records, committers.submit(self._commit_prepared, records, prepared, epochs, stop))

    def _take(self, lane: _Lane) -> tuple[list[Record], Any]:
        batch_max = self._settings.worker_batch_max
        records, lane.buffer = lane.buffer[:batch_max], lane.buffer[batch_max:]
        return records, self._apply.prepare(records)  # type: ignore[attr-defined]

    def _settle(self, index: int, *, block: bool) -> bool:
        """Collect the lane's batch in flight (waiting for it when `block`). Returns False when it rolled back
        for good; then the lane's records consumed after it (prepared or not) are discarded and its
        partitions rewound. A non-transient failure of the batch is re-raised here, stopping the worker."""
        lane = self._lane_states[index]
        if lane.in_flight is None:
            return True
        records, future = lane.in_flight
        if not block and not future.done():
            return True
        lane.in_flight = None
        outcome = future.result()
        if outcome == "committed":
            return True
        following = lane.discard()
        if isinstance(outcome, PartitionsFenced):
            self._after_fenced([*records, *following], outcome.partitions)
        else:  # aborted while shutting down
            self._rewind([*records, *following])
        return False

    def _wait_in_flight(self) -> None:
        """Let the batches in flight finish (commit or roll back) before partitions change hands."""
        futures = [lane.in_flight[1] for lane in self._lane_states if lane.in_flight is not None]
        if futures:
            wait_for_futures(futures)

    def _purge(self, partitions: set[tuple[str, int]]) -> None:
        """Drop consumed, not yet submitted records of partitions this instance no longer owns."""
        for lane in self._lane_states:
            if lane.ready is not None and any((r.topic, r.partition) in partitions for r in lane.ready[0]):
                lane.buffer = [*lane.ready[0], *lane.buffer]  # re-prepared without them
                lane.ready = None
            lane.buffer = [r for r in lane.buffer if (r.topic, r.partition) not in partitions]

    def _commit_prepared(self, records: list[Record], prepared: Any, epochs: dict[tuple[str, int], int],
                         stop: threading.Event) -> _Outcome:
        """Committer thread: apply one prepared batch and commit it with its offsets, retrying transient
        failures with backoff (never skipping a message)."""
        apply_prepared = self._apply.apply_prepared  # type: ignore[attr-defined]
        attempt = 0
        suspect: Suspicion | None = None
        while True:
            try:
                self._transaction(records, functools.partial(apply_prepared, batch=prepared, suspect=suspect),
                                  epochs)
            except PartitionsFenced as fenced:
                return fenced
            except Exception as error:
                if not is_retryable(error):
                    raise
                attempt += 1
                suspect = self._suspicion(error, attempt, records, suspect)
                if not self._backoff(error, attempt, records, stop):
                    return "aborted"
                continue
            with self._counters:
                self.stats.batches += 1
                self.stats.records += len(records)
            return "committed"

    def _records(self, messages: Sequence[Message]) -> list[Record]:
        out: list[Record] = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", extra=kv(error=str(err), topic=m.topic(), partition=m.partition()))
                continue
            topic, partition, offset = self._logical.get(m.topic() or ""), m.partition(), m.offset()
            if topic is None or partition is None or offset is None or (topic, partition) not in self._epochs:
                continue  # a partition we no longer own (fenced, revoked): never processed
            out.append(Record(topic, partition, offset, m.key(), m.value()))
        return out

    def _process_with_retry(self, records: list[Record], stop: threading.Event | None) -> int:
        attempt = 0
        suspect: Suspicion | None = None
        while True:
            records = [r for r in records if (r.topic, r.partition) in self._epochs]
            if not records:
                return 0
            try:
                self._process_once(records, suspect)
            except PartitionsFenced as fenced:
                self._after_fenced(records, fenced.partitions)
                return 0
            except Exception as error:
                if not is_retryable(error):
                    raise
                attempt += 1
                suspect = self._suspicion(error, attempt, records, suspect)
                if not self._backoff(error, attempt, records, stop):
                    self._rewind(records)  # shutting down: nothing committed, the next owner redoes it
                    return 0
                continue
            self.stats.batches += 1
            self.stats.records += len(records)
            return len(records)

    def _suspicion(self, error: Exception, attempt: int, records: Sequence[Record],
                   suspect: Suspicion | None) -> Suspicion | None:
        """After a failed attempt: is the batch itself at fault (apply the next attempt as a suspect)?

        Only when the apply callable can search a suspect batch, the error is not an outage, the attempts
        reached the bound and PostgreSQL answers a probe on a fresh connection. Once suspect, the batch
        stays suspect (the next attempts search it again, after an outage too)."""
        if suspect is not None:
            return Suspicion(attempt, error)
        if (not hasattr(self._apply, "apply_prepared") or is_outage(error)
                or attempt < self._attempts_before_parking or not self._database.answers()):
            return None
        first = records[0]
        log.warning("batch keeps failing while the database answers: searching it for the message at fault",
                    extra=kv(error=describe(error)[:500], error_class=type(error).__name__, attempt=attempt,
                             topic=first.topic, partition=first.partition, offset=first.offset,
                             records=len(records)))
        with self._counters:
            self.stats.suspect_batches += 1
        return Suspicion(attempt, error)

    def _backoff(self, error: Exception, attempt: int, records: Sequence[Record],
                 stop: threading.Event | None) -> bool:
        """Log a transient batch failure and sleep before the next attempt; False when shutting down."""
        with self._counters:
            self.stats.retries += 1
        delay = min(self._max_backoff, 0.05 * 2 ** min(attempt, 10))
        first = records[0]
        log.warning("batch failed, retrying", extra=kv(
            error=describe(error)[:500], error_class=type(error).__name__, attempt=attempt, delay_s=delay,
            topic=first.topic, partition=first.partition, offset=first.offset, records=len(records)))
        if stop is not None and stop.is_set():
            return False
        time.sleep(delay)
        return True

    def _process_once(self, records: Sequence[Record], suspect: Suspicion | None = None) -> None:
        if suspect is None:
            self._transaction(records, lambda conn: self._apply(conn, records), dict(self._epochs))
        else:  # only an apply callable with apply_prepared (the BatchProcessor) is ever made suspect
            apply = functools.partial(self._apply, records=records, suspect=suspect)  # type: ignore[call-arg]
            self._transaction(records, apply, dict(self._epochs))

    def _transaction(self, records: Sequence[Record], apply: Callable[[sa.Connection], list[DeadLetter]],
                     epochs: dict[tuple[str, int], int]) -> None:
        """One batch, one transaction: its effects, its dead letters acknowledged, its offsets (fenced by
        the epochs the batch was consumed under), then the commit."""
        next_offsets: dict[tuple[str, int], int] = {}
        for r in records:
            next_offsets[(r.topic, r.partition)] = r.offset + 1
        with self._engine.connect() as conn, conn.begin():
            dead = apply(conn)
            if dead:
                for letter in dead:
                    log.error("message dead-lettered", extra=kv(
                        topic=letter.topic, partition=letter.partition, offset=letter.offset,
                        key=letter.key.decode(errors="replace")[:200] if letter.key else None,
                        reason=letter.reason, error=letter.error[:500], error_class=letter.error_class))
                with self._counters:
                    self._dlq.publish(dead)  # acknowledged before the offset moves past them
            self._commit_offsets(conn, next_offsets, epochs)
        on_commit = getattr(self._apply, "on_commit", None)
        if on_commit is not None:
            on_commit()
        with self._counters:
            self.stats.dead_letters += len(dead)

    def _commit_offsets(self, conn: sa.Connection, next_offsets: dict[tuple[str, int], int],
                        epochs: dict[tuple[str, int], int]) -> None:
        keys = sorted(next_offsets)
        if any(k not in epochs for k in keys):
            raise PartitionsFenced({k for k in keys if k not in epochs})
        rows = conn.execute(sa.text("""
            UPDATE consumer_offsets o
               SET next_offset = v.next_offset, updated_at = now()
              FROM unnest(CAST(:topics AS text[]), CAST(:parts AS int[]), CAST(:offs AS bigint[]),
                          CAST(:epochs AS bigint[])) AS v(topic, partition, next_offset, epoch)
             WHERE o.group_id = :group AND o.topic = v.topic AND o.partition = v.partition
               AND o.epoch = v.epoch
            RETURNING o.topic, o.partition"""), {
            "topics": [k[0] for k in keys], "parts": [k[1] for k in keys],
            "offs": [next_offsets[k] for k in keys], "epochs": [epochs[k] for k in keys],
            "group": self._group}).all()
        missed = set(keys) - {(t, p) for t, p in rows}
        if missed:
            raise PartitionsFenced(missed)

    def _after_fenced(self, records: Sequence[Record], partitions: set[tuple[str, int]]) -> None:
        self.stats.fenced += 1
        log.warning("fenced: another instance owns these partitions now; batch discarded",
                    extra=kv(partitions=sorted(partitions), instance=self._instance))
        for key in partitions:
            self._epochs.pop(key, None)
        self._safe_pause([TopicPartition(self._settings.topic(t), p) for t, p in partitions])
        self._rewind([r for r in records if (r.topic, r.partition) not in partitions])

    def _rewind(self, records: Sequence[Record]) -> None:
        """Seek still-owned partitions back to the first record of an aborted batch."""
        first: dict[tuple[str, int], int] = {}
        for r in records:
            first.setdefault((r.topic, r.partition), r.offset)
        for (topic, partition), offset in first.items():
            if (topic, partition) in self._epochs:
                try:
                    self._consumer.seek(TopicPartition(self._settings.topic(topic), partition, offset))
                except KafkaException as error:
                    # Seeking can fail while a partition is being (re)assigned; reassignment seeks anyway.
                    log.warning("seek failed", extra=kv(topic=topic, partition=partition, offset=offset,
                                                        error=str(error)))

    def _safe_pause(self, partitions: list[TopicPartition]) -> None:
        try:
            self._consumer.pause(partitions)
        except KafkaException as error:
            log.warning("pause failed", extra=kv(error=str(error)))

    # ------------------------------------------------------------------ rebalance callbacks

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._wait_in_flight()
        if not partitions:
            if self._eager:
                consumer.assign([])
            else:
                consumer.incremental_assign([])
            return
        keys = sorted((self._logical[tp.topic], tp.partition) for tp in partitions)
        claimed = self._claim(keys)
        assigned = []
        for (topic, partition), (epoch, next_offset) in claimed.items():
            self._epochs[(topic, partition)] = epoch
            offset = next_offset if next_offset is not None else OFFSET_BEGINNING
            assigned.append(TopicPartition(self._settings.topic(topic), partition, offset))
            log.info("partition assigned", extra=kv(topic=topic, partition=partition, epoch=epoch,
                                                    offset=next_offset, instance=self._instance))
        if self._eager:
            consumer.assign(assigned)
        else:
            consumer.incremental_assign(assigned)
        # A partition paused after being fenced and now assigned again must fetch again.
        consumer.resume(assigned)

    def _claim(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int | None]]:
        attempt = 0
        while True:
            try:
                out: dict[tuple[str, int], tuple[int, int | None]] = {}
                with self._engine.begin() as conn:
                    for topic, partition in keys:
                        stmt = insert(consumer_offsets).values(
                            group_id=self._group, topic=topic, partition=partition, epoch=1, owner=self._instance)
                        row = conn.execute(stmt.on_conflict_do_update(
                            index_elements=["group_id", "topic", "partition"],
                            set_={"epoch": consumer_offsets.c.epoch + 1, "owner": stmt.excluded.owner,
                                  "updated_at": sa.func.now()})
                            .returning(consumer_offsets.c.epoch, consumer_offsets.c.next_offset)).one()
                        out[(topic, partition)] = (row.epoch, row.next_offset)
                return out
            except Exception as error:
                if not is_retryable(error):
                    raise
                attempt += 1
                log.warning("claiming partitions failed, retrying", extra=kv(error=str(error)[:300]))
                time.sleep(min(self._max_backoff, 0.05 * 2 ** min(attempt, 10)))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._wait_in_flight()
        self._forget(partitions, "revoked")
        self._unassign(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._wait_in_flight()
        self._forget(partitions, "lost")
        self._unassign(consumer, partitions)

    def _unassign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._eager:
            consumer.unassign()  # an eager revocation takes the whole assignment
        else:
            consumer.incremental_unassign(partitions)

    def _forget(self, partitions: list[TopicPartition], why: str) -> None:
        self._purge({(self._logical[tp.topic], tp.partition) for tp in partitions if tp.topic in self._logical})
        for tp in partitions:
            topic = self._logical.get(tp.topic)
            if topic is not None:
                self._epochs.pop((topic, tp.partition), None)
                log.info(f"partition {why}", extra=kv(topic=topic, partition=tp.partition, instance=self._instance))

