"""The fan-out consumer of billing-events.v1 (its own consumer group): decode, call `fan_out`, commit.

At-least-once: the offsets are committed to Kafka only after the batch's delivery rows committed in
PostgreSQL; a crash in between consumes the batch again and the unique (endpoint, event) adds nothing. A
batch whose transaction fails is sought back and consumed again after a pause. An undecodable message is
dead-lettered (reason `invalid_envelope`) before the offset moves past it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import TopicPartition

from services.webhooks.service_layer.fan_out import Consumed, fan_out
from services.webhooks.service_layer.ports import DeliveryStoreFactory
from shared.adapters.kafka.dlq import DeadLetter
from shared.contracts import topics
from shared.contracts.envelope import Envelope, EnvelopeError
from shared.domain.clock import Clock
from shared.observability import kv

_log = logging.getLogger("services.webhooks.fan_out")


class DeadLetters(Protocol):
    def publish(self, letters: list[DeadLetter]) -> None: ...


class FanOutConsumer:
    def __init__(self, consumer: Any, topic: str, stores: DeliveryStoreFactory, clock: Clock,
                 dead_letters: DeadLetters, *, batch_size: int = 500, retry_pause: float = 1.0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._consumer = consumer
        self._topic = topic
        self._stores = stores
        self._clock = clock
        self._dead_letters = dead_letters
        self._batch_size = batch_size
        self._retry_pause = retry_pause
        self._on_batch = on_batch

    def run(self, stop: threading.Event) -> None:
        self._consumer.subscribe([self._topic])
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                except Exception:
                    # NOTE: the batch was sought back (not committed): it is consumed again after the pause.
                    _log.warning("fan-out batch failed; consumed again", exc_info=True)
                    stop.wait(self._retry_pause)
        finally:
            self._consumer.close()

    def poll_once(self, timeout: float = 1.0) -> int:
        """Consume one batch and fan it out; returns the number of new delivery rows."""
        messages = self._consumer.consume(self._batch_size, timeout)
        batch: list[Consumed] = []
        letters: list[DeadLetter] = []
        first: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error() is not None:
                _log.warning("kafka error", extra=kv(error=str(msg.error())))
                continue
            first.setdefault((msg.topic(), msg.partition()), msg.offset())
            last[(msg.topic(), msg.partition())] = msg.offset()
            key = msg.key().decode("utf-8", errors="replace") if msg.key() is not None else None
            try:
                batch.append(Consumed(Envelope.from_bytes(msg.value()), key))
            except EnvelopeError as exc:
                letters.append(DeadLetter.of(topics.BILLING_EVENTS, msg.partition(), msg.offset(), msg.key(),
                                             msg.value(), exc))
        if not first:
            return 0
        try:
            self._dead_letters.publish(letters)
            with self._stores() as store:
                added = fan_out(store, batch, self._clock.now())
            # NOTE: the offsets are named: the consumer config stores none automatically
            # (`enable.auto.offset.store=false`), so a bare commit() fails with _NO_OFFSET and the batch was
            # consumed again forever.
            self._consumer.commit(offsets=[TopicPartition(topic, partition, offset + 1)
                                           for (topic, partition), offset in last.items()], asynchronous=False)
        except Exception:
            for (topic, partition), offset in first.items():
                self._consumer.seek(TopicPartition(topic, partition, offset))
            raise
        if added:
            _log.info("webhook deliveries added", extra=kv(events=len(batch), deliveries=added))
        if self._on_batch is not None:
            self._on_batch(added)
        return added
