"""An idempotent confluent-kafka producer whose delivery reports surface as errors.

`enable.idempotence` + `acks=all` means a retried send can neither duplicate nor reorder a message within
a partition. Callers either `send_and_wait` (synchronous: the edge acknowledges a request only after
Kafka did) or `send_async` (an awaitable resolved by the delivery report, for the asyncio edge).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from shared.config import Settings
from shared.contracts.envelope import Envelope
from shared.errors import DeliveryError


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str  # logical name; the settings' prefix is applied on send
    key: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def of(cls, topic: str, key: str, envelope: Envelope) -> OutgoingMessage:
        return cls(topic, key, envelope.to_bytes(), (("type", envelope.type.encode()),
                                                     ("event_id", str(envelope.event_id).encode())))


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, msg: Message) -> Delivered:
        return cls(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)


class KafkaProducer:
    def __init__(self, settings: Settings, *, client_id: str, **overrides: object) -> None:
        self._settings = settings
        self._producer = Producer(settings.kafka_producer_config(**{"client.id": client_id, **overrides}))
        self._poller: threading.Thread | None = None
        self._closing = threading.Event()

    def topic(self, name: str) -> str:
        """The physical topic name of a logical one (the settings' prefix applied)."""
        return self._settings.topic(name)

    # ---- synchronous

    def send_and_wait(self, messages: Sequence[OutgoingMessage], timeout: float = 30.0) -> list[Delivered]:
        """Send all messages and block until each is acknowledged; raise DeliveryError if any failed."""
        results: list[Delivered | KafkaError | None] = [None] * len(messages)

        def report(i: int):  # type: ignore[no-untyped-def]
            def cb(err: KafkaError | None, msg: Message) -> None:
                results[i] = err if err is not None else Delivered.of(msg)
            return cb

        for i, m in enumerate(messages):
            self._produce(m, report(i))
        remaining = self._producer.flush(timeout)
        failures = [r for r in results if not isinstance(r, Delivered)]
        if remaining or failures:
            raise DeliveryError(f"{len(failures)} of {len(messages)} messages not acknowledged: "
                                f"{[str(f) for f in failures[:3]]}")
        return [r for r in results if isinstance(r, Delivered)]

    def send_rows_and_wait(self, rows: Sequence[tuple[str, str, bytes, list[tuple[str, str | bytes | None]]]],
                           timeout: float = 30.0) -> None:
        """Like ``send_and_wait`` for (physical topic, key, value, headers) rows, without a result per
        message: one delivery callback counts the failures (the outbox relay's path, per row cost only)."""
        failures: list[KafkaError] = []

        def report(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err)

        produce = self._producer.produce
        for topic, key, value, headers in rows:
            while True:
                try:
                    produce(topic, key=key.encode(), value=value, headers=headers, on_delivery=report)
                    break
                except BufferError:
                    self._producer.poll(0.05)  # local queue full: serve delivery reports to make room
        remaining = self._producer.flush(timeout)
        if remaining or failures:
            raise DeliveryError(f"{len(failures) + remaining} of {len(rows)} messages not acknowledged: "
                                f"{[str(f) for f in failures[:3]]}")

    def _produce(self, m: OutgoingMessage, cb: Callable[[KafkaError | None, Message], None]) -> None:
        while True:
            try:
                self._producer.produce(self._settings.topic(m.topic), key=m.key.encode(), value=m.value,
                                       headers=list(m.headers), on_delivery=cb)
                return
            except BufferError:
                # Local queue full: serve delivery reports to make room, then try again.
                self._producer.poll(0.05)

    # ---- asynchronous (asyncio)

    def start(self) -> None:
        """Start the background thread that serves delivery callbacks for `send_async`."""
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="kafka-producer-poll", daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.05)

    def send_async(self, messages: Sequence[OutgoingMessage]) -> asyncio.Future[list[Delivered]]:
        """Enqueue messages; the returned future resolves when all are acknowledged (or fails)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Delivered]] = loop.create_future()
        results: list[Delivered | None] = [None] * len(messages)
        pending = [len(messages)]
        lock = threading.Lock()
        if not messages:
            fut.set_result([])
            return fut

        def settle_error(err: KafkaError) -> None:
            if not fut.done():
                fut.set_exception(DeliveryError(str(err)))

        def settle_ok() -> None:
            if not fut.done():
                fut.set_result([r for r in results if r is not None])

        def report(i: int):  # type: ignore[no-untyped-def]
            def cb(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    loop.call_soon_threadsafe(settle_error, err)
                    return
                results[i] = Delivered.of(msg)
                with lock:
                    pending[0] -= 1
                    done = pending[0] == 0
                if done:
                    loop.call_soon_threadsafe(settle_ok)
            return cb

        for i, m in enumerate(messages):
            self._produce(m, report(i))
        return fut

    def flush(self, timeout: float = 30.0) -> None:
        if self._producer.flush(timeout):
            raise DeliveryError("messages still unacknowledged after flush")

    def close(self, timeout: float = 10.0) -> None:
        self._closing.set()
        if self._poller is not None:
            self._poller.join(timeout=2)
        self._producer.flush(timeout)
