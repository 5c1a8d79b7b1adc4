"""Pre-encoded messages to Kafka in batches: one `produce_batch` call and one delivery tracker per batch.

Used by the edge (`POST /v1/ingest`: a request is answered only when every message of its batch was
acknowledged) and by the SDK's `KafkaUsageProducer`. The producer is librdkafka's idempotent producer
with `acks=all` (`Settings.kafka_producer_config`): a retried send neither duplicates nor reorders.

Why not `shared.adapters.kafka.producer.KafkaProducer`: it produces message by message with a closure
and a `Delivered` record per message, which costs more than building the message. Here a batch is a
list of `{"key": bytes, "value": bytes}` handed to librdkafka in one call, and its tracker only counts
delivery reports down; a message librdkafka refuses to queue (other than "queue full", which waits for
room) counts as failed at once, since no delivery report will ever come for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from shared.errors import DeliveryError

KafkaMessage = dict[str, Any]  # {"key": bytes, "value": bytes}, as produce_batch takes them
DeliveryReport = Callable[[KafkaError | None, Message | None], None]
_QUEUE_FULL_WAIT_S = 0.05
SERVE_INTERVAL_S = 0.002  # how often a waiting send serves delivery reports (librdkafka lingers 5 ms)


class BatchTracker:
    """Counts one batch's delivery reports; `on_done(failures)` runs once, when every message is settled
    (on whichever thread served the last report)."""

    __slots__ = ("_failures", "_lock", "_on_done", "_pending")

    def __init__(self, count: int, on_done: Callable[[list[str]], None]) -> None:
        self._pending = count
        self._failures: list[str] = []
        self._on_done = on_done
        self._lock = threading.Lock()
        if count == 0:
            on_done([])

    def report(self, err: KafkaError | None, _: Message | None = None) -> None:
        """The delivery callback of every message of the batch."""
        with self._lock:
            if err is not None:
                self._failures.append(str(err))
            self._pending -= 1
            done = self._pending == 0
        if done:
            self._on_done(self._failures)


class BatchProducer:
    """An idempotent librdkafka producer fed whole batches of pre-encoded messages."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(config)
        self._waiting = 0  # sends awaiting their acknowledgements
        self._server: asyncio.Task[None] | None = None

    def produce(self, topic: str, messages: list[KafkaMessage], report: DeliveryReport) -> None:
        """Queue every message (waiting for room while the local queue is full); `report` gets each
        message's delivery report, or the error at once for a message librdkafka refused to queue.
        `messages` is consumed: librdkafka marks refused ones in place."""
        while messages:
            queued = self._producer.produce_batch(topic, messages, on_delivery=report)
            if queued == len(messages):
                return
            retry: list[KafkaMessage] = []
            for message in messages:
                error = message.pop("_error", None)
                if error is None:
                    continue
                if error.code() == KafkaError._QUEUE_FULL:
                    retry.append(message)
                else:
                    report(error, None)
            if retry:
                self._producer.poll(_QUEUE_FULL_WAIT_S)  # serve delivery reports: that makes room
            messages = retry

    def produce_one(self, topic: str, key: bytes, value: bytes, report: DeliveryReport) -> None:
        """Queue one message (waiting for room while the local queue is full)."""
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=report)
                return
            except BufferError:
                self._producer.poll(_QUEUE_FULL_WAIT_S)

    def poll(self, timeout: float = 0.0) -> int:
        return int(self._producer.poll(timeout))

    def outstanding(self) -> int:
        """Messages queued or in flight whose delivery report was not served yet."""
        return len(self._producer)

    def flush(self, timeout: float) -> int:
        """Wait for every delivery report (up to `timeout`); the number of messages still outstanding."""
        return int(self._producer.flush(timeout))

    # ---- asyncio: the event loop itself serves the delivery reports

    async def send(self, topic: str, messages: list[KafkaMessage]) -> None:
        """Produce a batch and wait until Kafka acknowledged all of it; DeliveryError if any failed.

        # NOTE: delivery reports are served by a task on the event loop (`poll(0)` every
        # `SERVE_INTERVAL_S` while a send waits), not by a thread: a thread would take the GIL from the
        # loop once per message to run its callback, and those hand-overs cost more than the callbacks."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[str]] = loop.create_future()
        loop_thread = threading.get_ident()

        def settle(failures: list[str]) -> None:
            if not done.done():
                done.set_result(failures)

        def settled(failures: list[str]) -> None:
            if threading.get_ident() == loop_thread:
                settle(failures)
            else:  # a flush() on another thread served the report
                loop.call_soon_threadsafe(settle, failures)

        count = len(messages)
        tracker = BatchTracker(count, settled)
        self.produce(topic, messages, tracker.report)
        self._waiting += 1
        try:
            if self._server is None or self._server.done() or self._server.get_loop() is not loop:
                self._server = loop.create_task(self._serve())
            failures = await done
        finally:
            self._waiting -= 1
        if failures:
            raise DeliveryError(f"{len(failures)} of {count} messages not acknowledged: {failures[:3]}")

    async def _serve(self) -> None:
        while self._waiting:
            self._producer.poll(0)
            await asyncio.sleep(SERVE_INTERVAL_S)

    def close(self, timeout: float = 10.0) -> int:
        """Flush; the number of messages left unacknowledged."""
        return self.flush(timeout)
